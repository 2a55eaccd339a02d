"""The token store's kind of text neighbour encoder ids is `"neighbor_text"` (it holds open_clip's or a Hugging Face
text model's ids); a store written when it was called `"clip"` is still read, and `"clip"` is still accepted."""
import numpy as np
import torch

from processing.data.token_store import build_token_cache
from processing.page_graph import PageGraph
from processing.token_cache import MMGLTokenCache, _open_store, _write_store
from tests.test_processor import image_dir, image_processor, known_row, make_processor, tokenizer  # noqa: F401


def test_a_store_that_says_clip_is_read(tokenizer, image_processor, tmp_path):  # noqa: F811
    processor = make_processor(tokenizer, image_processor, "all", "sa_e")
    assert set(processor.tokenizer_identity()) == {"lm", "neighbor_text"}
    build_token_cache(processor, [known_row()], neighbor_input_ids=True, show_progress=False)
    path = tmp_path / "tokens.bin"
    processor.token_cache.save(path)
    texts = [node.text for node in PageGraph.from_wikiweb2m(known_row()).nodes if node.text]
    header, arrays = _open_store(str(path))
    assert header["counts"]["neighbor_text"] == len(set(texts)) > 0
    # The same store as written before the rename: arrays, counts and identity under "clip".
    old = lambda name: name.replace("neighbor_text", "clip")  # noqa: E731
    header = {**header, "identity": {old(k): v for k, v in header["identity"].items()},
              "counts": {old(k): v for k, v in header["counts"].items()}}
    legacy = tmp_path / "legacy.bin"
    with open(legacy, "wb") as handle:
        _write_store(handle, {k: v for k, v in header.items() if k not in ("arrays", "data_bytes")},
                     {old(name): np.asarray(array) for name, array in arrays.items()})
    assert "clip_keys" in _open_store(str(legacy))[1]
    loaded = MMGLTokenCache.load(legacy, identity=processor.tokenizer_identity())
    fresh = MMGLTokenCache.load(path)
    for text in texts:
        assert torch.equal(loaded.get("neighbor_text", text), fresh.get("neighbor_text", text))
        assert torch.equal(loaded.get("clip", text), fresh.get("neighbor_text", text))
    assert loaded.count("neighbor_text") == fresh.count("neighbor_text") == len(set(texts))
    processor.load_token_cache(legacy)  # the processor takes it as its own
    assert processor.token_cache.identity == processor.tokenizer_identity()
