"""A saved MMGL directory loads in a fresh process, offline, without the mmgl package importable."""

import json
import subprocess
import sys
import textwrap

import torch

from tests.modeling_helpers import TINY_CLIP, neighbor_batch, tiny_model

LOADER = textwrap.dedent(
    """
    import sys
    # The package must not be importable: only the files in the saved folder may be used.
    sys.modules["modeling_mmgl"] = None
    sys.modules["processing"] = None
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    folder = sys.argv[1]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__name__ == "MMGLConfig", type(config)
    assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
    batch = torch.load(folder + "/batch.pt")
    for auto_class in (AutoModel, AutoModelForCausalLM):
        model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__name__ == "MMGLForConditionalGeneration", type(model)
        with torch.no_grad():
            logits = model(**batch).logits
        torch.testing.assert_close(logits, torch.load(folder + "/logits.pt"), atol=1e-5, rtol=0)
    print("REMOTE_OK")
    """
)


def test_remote_code_round_trip_in_fresh_process(tmp_path):
    model = tiny_model(
        "cross_attention", "gnn", neighbor_encoder_config=TINY_CLIP,
        text_neighbor_embed_dim=TINY_CLIP["embed_dim"], image_neighbor_embed_dim=TINY_CLIP["embed_dim"], open_gates=True,
    )
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mmgl.MMGLConfig",
        "AutoModel": "modeling_mmgl.MMGLForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_mmgl.MMGLForConditionalGeneration",
    }
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "cross_attention.py").exists()
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        torch.save(model(**batch).logits, tmp_path / "logits.pt")
    torch.save(batch, tmp_path / "batch.pt")
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd="/",
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf_home")},
    )
    assert result.returncode == 0 and "REMOTE_OK" in result.stdout, result.stderr[-3000:]
