"""Neighbour bridges (`MMGLConfig.neighbor_bridge`): `linear` is the model of before the switch, bit for bit; the
Perceiver Resampler and the Q-Former give a fixed number of LM tokens, honour the neighbour mask, start as OPT where
the gates say so, and generate with and without cache alike."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from modeling_mmgl import MMGLConfig, MMGLForConditionalGeneration
from tests.modeling_helpers import (
    IMAGE_DIM,
    NEIGHBOR_TOKEN,
    TEXT_DIM,
    TINY_CLIP,
    TINY_OPT,
    labels_for,
    neighbor_batch,
    tiny_config,
    tiny_model,
)

MODES = ["self_attention", "cross_attention"]
BRIDGES = ["perceiver", "qformer"]
ROOT = Path(__file__).resolve().parents[1]
# The last commit before the switch existed: its modeling code is "today's model" that `linear` must equal.
BEFORE_BRIDGES = "35e61c92e022ee782830d14a817a42edeafc0963"


def bridged_model(mode, bridge, position_encoding="sequence", **overrides):
    return tiny_model(mode, position_encoding, neighbor_bridge=bridge, bridge_num_latents=5, **overrides)


def modeling_code_before_bridges(tmp_path) -> type:
    """`MMGLForConditionalGeneration` / `MMGLConfig` as they were before the switch, from git, as a package of their
    own (no auto-class registration: its `__init__` is left empty)."""
    try:
        names = subprocess.run(
            ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{BEFORE_BRIDGES}:modeling_mmgl"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the git history of this checkout is not available")
    package = tmp_path / "mmgl_before_bridges"
    package.mkdir()
    for name in names:
        if name.endswith(".py") and name != "__init__.py":
            source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE_BRIDGES}:modeling_mmgl/{name}"],
                                    capture_output=True, text=True, check=True).stdout
            (package / name).write_text(source)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        configuration = importlib.import_module("mmgl_before_bridges.configuration_mmgl")
        modeling = importlib.import_module("mmgl_before_bridges.modeling_mmgl")
    finally:
        sys.path.remove(str(tmp_path))
    return configuration.MMGLConfig, modeling.MMGLForConditionalGeneration


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("position_encoding", ["none", "sequence", "laplacian", "gnn"])
def test_linear_is_the_model_before_the_switch(tmp_path, mode, position_encoding):
    OldConfig, OldModel = modeling_code_before_bridges(tmp_path)
    settings = tiny_config(mode, position_encoding).to_dict()
    assert settings["neighbor_bridge"] == "linear", "the default"
    old_settings = {key: value for key, value in settings.items() if key in OldConfig().to_dict()}
    torch.manual_seed(0)
    old = OldModel(OldConfig(**old_settings)).eval()
    torch.manual_seed(0)
    new = MMGLForConditionalGeneration(MMGLConfig(**settings)).eval()
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(new_state) == list(old_state), "same parameters, same names"
    assert all(torch.equal(new_state[name], old_state[name]) for name in old_state), "same initialisation"
    if mode == "cross_attention":  # open the gates so the neighbours reach the logits in both
        for model in (old, new):
            for name, param in model.named_parameters():
                if "alpha_" in name:
                    param.data.fill_(1.0)
    batch = neighbor_batch(new.config)
    with torch.no_grad():
        new_out = new(**batch, labels=labels_for(batch))
        old_out = old(**batch, labels=labels_for(batch))
    assert torch.equal(new_out.logits, old_out.logits)
    assert torch.equal(new_out.loss, old_out.loss)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=1, eos_token_id=None)
    assert torch.equal(new.generate(**batch, **kwargs), old.generate(**batch, **kwargs))


def tiny_opt(seed=0):
    torch.manual_seed(seed)
    return OPTForCausalLM(OPTConfig(**TINY_OPT)).eval()


@pytest.mark.parametrize("bridge", BRIDGES)
def test_bridged_cross_attention_with_closed_gates_equals_opt(bridge):
    opt = tiny_opt()
    model = bridged_model("cross_attention", bridge)
    missing, unexpected = model.load_state_dict(opt.state_dict(), strict=False)
    assert not unexpected and any(key.startswith("neighbor_bridge.") for key in missing)
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        bridged = model(**batch).logits
        plain = opt(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(bridged, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bridge", BRIDGES)
def test_example_without_real_neighbours_reads_as_opt(mode, bridge):
    """No real neighbour: no latent placeholders (self-attention), no cross-attention update (gates open)."""
    opt = tiny_opt()
    model = bridged_model(mode, bridge, open_gates=True)
    model.load_state_dict(opt.state_dict(), strict=False)
    input_ids = torch.randint(3, 90, (2, 9))
    masks = {"text_neighbor_mask": torch.zeros(2, 3, dtype=torch.long),
             "image_neighbor_mask": torch.zeros(2, 2, dtype=torch.long)}
    with torch.no_grad():
        bridged = model(input_ids=input_ids, text_neighbor_embeds=torch.randn(2, 3, TEXT_DIM),
                        image_neighbor_embeds=torch.randn(2, 2, IMAGE_DIM), **masks).logits
        plain = opt(input_ids=input_ids).logits
    torch.testing.assert_close(bridged, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bridge", BRIDGES)
def test_masked_neighbours_do_not_change_the_output(mode, bridge):
    model = bridged_model(mode, bridge, open_gates=True)
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        reference = model(**batch).logits
        for key, slot in (("text_neighbor_embeds", (slice(None), 2)), ("image_neighbor_embeds", (0, 1))):
            for value in (0.0, 1e4, -3.0):  # padding slots: text slot 2 in both rows, image slot 1 in row 0
                changed = dict(batch, **{key: batch[key].clone()})
                changed[key][slot] = value
                assert torch.equal(model(**changed).logits, reference), (key, value)
        real = dict(batch, text_neighbor_embeds=batch["text_neighbor_embeds"].clone())
        real["text_neighbor_embeds"][0, 1] += 1.0  # a real neighbour of row 0 does change it (at init, a little)
        assert not torch.equal(model(**real).logits[0], reference[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bridge", BRIDGES)
def test_an_example_reads_the_same_alone_and_in_a_padded_batch(mode, bridge):
    model = bridged_model(mode, bridge, position_encoding="none", open_gates=True)
    batch = neighbor_batch(model.config)
    row = 1  # one real text neighbour of three slots, two real images
    keep = batch["attention_mask"][row].bool()
    alone = {
        "input_ids": batch["input_ids"][row, keep][None],
        "text_neighbor_embeds": batch["text_neighbor_embeds"][row : row + 1, :1],
        "text_neighbor_mask": batch["text_neighbor_mask"][row : row + 1, :1],
        "image_neighbor_embeds": batch["image_neighbor_embeds"][row : row + 1],
        "image_neighbor_mask": batch["image_neighbor_mask"][row : row + 1],
    }
    with torch.no_grad():
        in_batch = model(**batch).logits[row, keep]
        torch.testing.assert_close(model(**alone).logits[0], in_batch, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bridge", ["linear", *BRIDGES])
def test_lm_input_length_does_not_grow_with_the_neighbours(mode, bridge):
    model = tiny_model(mode, "none", neighbor_bridge=bridge, bridge_num_latents=5)
    lengths = []
    for num_text in (1, 4, 16):
        with torch.no_grad():
            tokens, token_mask = model.embed_neighbors(
                2, text_neighbor_embeds=torch.randn(2, num_text, TEXT_DIM),
                text_neighbor_mask=torch.ones(2, num_text, dtype=torch.long),
            )
        assert tokens.shape[:2] == token_mask.shape
        lengths.append(tokens.shape[1])
    if bridge == "linear":
        assert lengths == [n * model.config.text_neighbor_num_tokens for n in (1, 4, 16)]
    else:
        assert lengths == [5, 5, 5]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bridge", BRIDGES)
def test_cached_generation_equals_uncached(mode, bridge):
    model = bridged_model(mode, bridge, open_gates=True)
    batch = neighbor_batch(model.config)
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=1, eos_token_id=None)
    cached = model.generate(**batch, use_cache=True, **kwargs)
    assert torch.equal(cached, model.generate(**batch, use_cache=False, **kwargs))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bridge", BRIDGES)
def test_loads_plain_opt_checkpoint_with_the_bridge_initialised(tmp_path, mode, bridge):
    opt = tiny_opt()
    opt.save_pretrained(tmp_path)
    config = MMGLConfig.from_pretrained(
        tmp_path, neighbor_mode=mode, neighbor_token_id=NEIGHBOR_TOKEN, text_neighbor_embed_dim=TEXT_DIM,
        image_neighbor_embed_dim=IMAGE_DIM, cross_attention_interval=2, neighbor_bridge=bridge, bridge_num_latents=5,
    )
    model, info = MMGLForConditionalGeneration.from_pretrained(tmp_path, config=config, output_loading_info=True)
    assert any(key.startswith("neighbor_bridge.") for key in info["missing_keys"]) and not info["unexpected_keys"]
    learned = model.neighbor_bridge.resampler.latents if bridge == "perceiver" else model.neighbor_bridge.query_tokens
    expected_std = 1.0 if bridge == "perceiver" else config.init_std  # IDEFICS' latents, BLIP-2's queries
    assert torch.isfinite(learned).all() and 0.5 * expected_std < float(learned.detach().std()) < 2 * expected_std
    # Distinct latents: identical ones would all read the same thing.
    assert torch.cdist(learned.reshape(5, -1), learned.reshape(5, -1)).fill_diagonal_(1.0).min() > 0


@pytest.mark.parametrize("bridge", BRIDGES)
def test_strict_save_load_round_trip(tmp_path, bridge):
    model = bridged_model("self_attention", bridge, open_gates=True)
    model.save_pretrained(tmp_path)
    loaded = MMGLForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.neighbor_bridge == bridge and loaded.config.bridge_num_latents == 5
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("bridge", BRIDGES)
def test_raw_inputs_through_frozen_encoder_match_precomputed(bridge):
    model = bridged_model(
        "self_attention", bridge, neighbor_encoder_config=TINY_CLIP, text_neighbor_embed_dim=TINY_CLIP["embed_dim"],
        image_neighbor_embed_dim=TINY_CLIP["embed_dim"],
    )
    batch = neighbor_batch(model.config)
    text_ids = torch.randint(1, 49000, (2, 3, 16))
    pixels = torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        clip = model.neighbor_encoder.model
        text_embeds = clip.encode_text(text_ids.flatten(0, 1), normalize=True).view(2, 3, -1)
        image_embeds = clip.encode_image(pixels.flatten(0, 1), normalize=True).view(2, 2, -1)
        precomputed = model(**dict(batch, text_neighbor_embeds=text_embeds, image_neighbor_embeds=image_embeds)).logits
        raw = dict(batch, text_neighbor_input_ids=text_ids, image_neighbor_pixel_values=pixels)
        del raw["text_neighbor_embeds"], raw["image_neighbor_embeds"]
        torch.testing.assert_close(model(**raw).logits, precomputed, atol=1e-5, rtol=0)


def test_wrong_placeholder_count_names_the_bridge():
    model = bridged_model("self_attention", "perceiver")
    batch = neighbor_batch(model.config)
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][0, -1] = NEIGHBOR_TOKEN
    with pytest.raises(ValueError, match="bridge_num_latents=5 when the example has any real neighbour"):
        model(**batch)


def test_config_validation():
    with pytest.raises(ValueError, match="neighbor_bridge must be one of"):
        tiny_config(neighbor_bridge="resampler")
    with pytest.raises(ValueError, match="neighbor_bridge='qformer' needs neighbours"):
        MMGLConfig(**TINY_OPT, neighbor_bridge="qformer")
    with pytest.raises(ValueError, match="bridge_num_latents must be >= 1"):
        tiny_config(neighbor_bridge="perceiver", bridge_num_latents=0)
    with pytest.raises(ValueError, match="multiple of"):
        # Self-attention neighbours enter at the token-embedding width: 30 does not split over 4 heads.
        tiny_model("self_attention", neighbor_bridge="perceiver", word_embed_proj_dim=30)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bridge", BRIDGES)
def test_gradient_checkpointing_gives_same_gradients(mode, bridge):
    grads = []
    for checkpointing in (False, True):
        model = bridged_model(mode, bridge, open_gates=True, dropout=0.0, attention_dropout=0.0).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        batch = neighbor_batch(model.config)
        model(**batch, labels=labels_for(batch), use_cache=False).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(n.startswith("neighbor_bridge.") for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bridge", BRIDGES)
def test_bf16_forward_and_generate(mode, bridge):
    model = bridged_model(mode, bridge, open_gates=True)
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        reference = model(**batch).logits
        model = model.to(torch.bfloat16)
        logits = model(**batch).logits
    assert logits.dtype == torch.bfloat16
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real].float(), reference[real], atol=0.1, rtol=0.05)
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=1)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 3
