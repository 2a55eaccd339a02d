"""Every legal (neighbour encoding, tuning) pair trains a model whose output depends on the neighbours, from the
real starting state (cross-attention gates closed, so a CA-E model starts exactly as OPT)."""

from types import SimpleNamespace

import pytest
import torch
from peft.utils import ModulesToSaveWrapper

from modeling_mmgl import MMGLForConditionalGeneration
from processing.design_space import NEIGHBOR_ENCODINGS, NEIGHBOR_MODE_OF_ENCODING
from processing.training import export
from processing.training.tuning import TUNINGS, apply_tuning, check_tuning, is_mmgl_parameter
from tests.modeling_helpers import TINY_CLIP, labels_for, neighbor_batch, tiny_model

LEGAL_PAIRS = [(e, t) for e in NEIGHBOR_ENCODINGS for t in TUNINGS if t != "flamingo" or e == "ca_e"]


def tuning_args(tuning):
    return SimpleNamespace(tuning=tuning, lora_r=4, lora_alpha=8, num_virtual_tokens=3)


def train_steps(model, batch, steps=3, lr=1e-2):
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels_for(batch)).loss.backward()
        optimizer.step()
    return model.eval()


def replaced_neighbors(batch, seed=1):
    generator = torch.Generator().manual_seed(seed)
    other = dict(batch)
    for key in ("text_neighbor_embeds", "image_neighbor_embeds") & batch.keys():
        other[key] = torch.randn(batch[key].shape, generator=generator) * 3
    return other


def neighbor_effect(model, batch) -> float:
    with torch.no_grad():
        return (model(**batch).logits - model(**replaced_neighbors(batch)).logits).abs().max().item()


@pytest.mark.parametrize("bridge", ["linear", "perceiver", "qformer"])
@pytest.mark.parametrize("encoding,tuning", LEGAL_PAIRS)
def test_every_legal_pair_trains_a_model_that_reads_neighbours(encoding, tuning, bridge):
    check_tuning(tuning, encoding)
    model = tiny_model(NEIGHBOR_MODE_OF_ENCODING[encoding], "sequence", open_gates=False, neighbor_bridge=bridge,
                       bridge_num_latents=5)
    model = apply_tuning(model, tuning_args(tuning))
    # SA-TE's texts are LM tokens: only its images are embeddings (and bridged).
    batch = neighbor_batch(model.config, text_neighbors=encoding != "sa_te")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if encoding == "ca_e":
        # The gates start closed: without training them, neighbours could never reach the LM.
        assert any("alpha_cross_attn" in n for n in trainable), trainable
        assert any("gated_cross_attention" in n and "cross_attn.k_proj" in n for n in trainable), trainable
    assert any("neighbor_projection" in n for n in trainable) and any("position_encoding" in n for n in trainable)
    if bridge != "linear":  # the bridge is new: it always trains, in full (peft: its `modules_to_save` copy)
        bridge_params = [n for n, p in model.named_parameters() if "neighbor_bridge" in n and "original_module" not in n]
        assert bridge_params and all(n in trainable for n in bridge_params)
    before = neighbor_effect(model, batch)
    train_steps(model, batch)
    if encoding == "ca_e" and bridge != "linear":
        # Closed gates: not a bit of the neighbours reaches the logits before training. After 3 steps a path exists,
        # but at this 32-wide test shape a bridge's output is dominated by its own latents at initialisation
        # (IDEFICS' latents are drawn with std 1), so the effect is small (~1e-6; > 1e-4 after ~30 steps).
        assert before == 0.0
        assert neighbor_effect(model, batch) > 0.0
    else:
        assert neighbor_effect(model, batch) > 1e-4


@pytest.mark.parametrize("encoding", NEIGHBOR_ENCODINGS)
def test_flamingo_is_refused_without_cross_attention(encoding):
    if encoding == "ca_e":
        check_tuning("flamingo", encoding)
    else:
        with pytest.raises(ValueError, match="flamingo.*ca_e"):
            check_tuning("flamingo", encoding)


def test_lora_targets_only_decoder_self_attention():
    model = tiny_model(
        "cross_attention", "sequence", open_gates=False, neighbor_encoder_config=TINY_CLIP,
        text_neighbor_embed_dim=TINY_CLIP["embed_dim"], image_neighbor_embed_dim=TINY_CLIP["embed_dim"],
    )
    model = apply_tuning(model, tuning_args("lora"))
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    layers = model.config.num_hidden_layers
    assert len(wrapped) == 4 * layers
    assert all(".self_attn." in n and "neighbor_encoder" not in n and "gated_cross" not in n for n in wrapped)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "neighbor_encoder" in n)


def test_flamingo_trains_only_mmgl_modules():
    model = apply_tuning(tiny_model("cross_attention", "sequence", open_gates=False), tuning_args("flamingo"))
    for name, param in model.named_parameters():
        assert param.requires_grad == is_mmgl_parameter(name), name


@pytest.mark.parametrize("tuning", ["lora", "prompt"])
def test_exported_model_carries_trained_mmgl_modules(tuning, monkeypatch, tmp_path):
    model = apply_tuning(tiny_model("cross_attention", "sequence", open_gates=False), tuning_args(tuning))
    batch = neighbor_batch(model.config)
    train_steps(model, batch)
    exported = {}
    monkeypatch.setattr("processing.training.export.save_for_hub",
                        lambda m, processor, output_dir: exported.setdefault("model", m))
    monkeypatch.setattr(type(model), "save_pretrained", lambda self, path: None)  # the adapter copy
    export.save_hub_folder(model, None, tmp_path / "hub")
    plain = exported["model"]
    assert isinstance(plain, MMGLForConditionalGeneration)
    assert not any(isinstance(m, ModulesToSaveWrapper) for m in plain.modules())
    gate = plain.model.decoder.layers[1].gated_cross_attention.alpha_cross_attn
    assert gate.abs().item() > 0, "the trained (opened) gate must be exported, not the closed original"
    # What the Hub folder stores loads back under MMGL's own names and still reads neighbours.
    plain.save_pretrained(tmp_path / "weights")
    reloaded = MMGLForConditionalGeneration.from_pretrained(tmp_path / "weights").eval()
    assert neighbor_effect(reloaded, batch) > 1e-4
    if tuning == "lora":  # merged: the exported model computes what the trained adapter computed
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**batch).logits, plain(**batch).logits)
