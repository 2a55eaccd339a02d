"""MMGLForConditionalGeneration: OPT parity, neighbour placement and masking, generation, bad input."""

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
ENCODINGS = ["none", "sequence", "laplacian", "gnn"]


def tiny_opt(seed=0):
    torch.manual_seed(seed)
    return OPTForCausalLM(OPTConfig(**TINY_OPT)).eval()


def test_switches_off_is_opt():
    opt = tiny_opt()
    model = MMGLForConditionalGeneration(MMGLConfig(**TINY_OPT)).eval()
    assert list(model.state_dict()) == list(opt.state_dict())
    model.load_state_dict(opt.state_dict(), strict=True)
    input_ids = torch.randint(3, 90, (2, 12))
    torch.testing.assert_close(model(input_ids).logits, opt(input_ids).logits, atol=1e-5, rtol=0)


def test_cross_attention_at_init_equals_opt():
    opt = tiny_opt()
    model = tiny_model("cross_attention", "sequence", open_gates=False)
    missing, unexpected = model.load_state_dict(opt.state_dict(), strict=False)
    assert not unexpected and missing, "OPT weights load; MMGL modules stay as initialised"
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        with_neighbors = model(**batch).logits
        plain = opt(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(with_neighbors, plain, atol=1e-5, rtol=0)


def test_ungated_cross_attention_differs_from_opt_at_init_and_trains():
    opt = tiny_opt()
    model = tiny_model("cross_attention", "sequence", open_gates=False, cross_attention_gating=False)
    assert not any("alpha_" in name for name, _ in model.named_parameters()), "ungated blocks have no gates"
    missing, unexpected = model.load_state_dict(opt.state_dict(), strict=False)
    assert not unexpected and missing
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        plain = opt(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert (model(**batch).logits - plain).abs().max() > 1e-3, "residuals are added directly: not OPT at init"
    labels = labels_for(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_cross_attention_gating_round_trips(tmp_path):
    model = tiny_model("cross_attention", "sequence", open_gates=False, cross_attention_gating=False)
    model.save_pretrained(tmp_path)
    reloaded = MMGLForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.cross_attention_gating is False
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("mode", MODES)
def test_loads_plain_opt_checkpoint(tmp_path, mode):
    opt = tiny_opt()
    opt.save_pretrained(tmp_path)
    config = MMGLConfig.from_pretrained(
        tmp_path, neighbor_mode=mode, neighbor_token_id=NEIGHBOR_TOKEN, position_encoding="gnn",
        text_neighbor_embed_dim=TEXT_DIM, image_neighbor_embed_dim=IMAGE_DIM, cross_attention_interval=2,
    )
    model, info = MMGLForConditionalGeneration.from_pretrained(tmp_path, config=config, output_loading_info=True)
    new_prefixes = ("neighbor_projection.", "position_encoding.", "model.decoder.layers.1.gated_cross_attention.",
                    "model.decoder.layers.3.gated_cross_attention.")
    assert info["missing_keys"] and all(key.startswith(new_prefixes) for key in info["missing_keys"])
    assert not info["unexpected_keys"]
    for name, tensor in opt.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)
    if mode == "cross_attention":
        gates = [p for n, p in model.named_parameters() if "alpha_" in n]
        assert gates and all(float(g.abs().max()) == 0.0 for g in gates), "missing gates initialise closed"


@pytest.mark.parametrize("gnn_type", ["gcn", "gat", "sage"])
def test_gnn_layers_missing_from_an_opt_checkpoint_are_drawn_and_train(tmp_path, gnn_type):
    # `from_pretrained` builds on the meta device, where torch_geometric's constructors draw nothing; the GNN an OPT
    # base lacks once stayed uninitialised memory (NaN in the controlled study: loss NaN from the first step).
    tiny_opt().save_pretrained(tmp_path)
    config = MMGLConfig.from_pretrained(
        tmp_path, neighbor_mode="self_attention", neighbor_token_id=NEIGHBOR_TOKEN, position_encoding="gnn",
        gnn_type=gnn_type, text_neighbor_embed_dim=TEXT_DIM, image_neighbor_embed_dim=IMAGE_DIM,
        text_neighbor_num_tokens=2, image_neighbor_num_tokens=3, max_text_neighbors=4, max_image_neighbors=3,
    )
    torch.manual_seed(0)
    model = MMGLForConditionalGeneration.from_pretrained(tmp_path, config=config)
    for name, param in model.position_encoding.layers.named_parameters():
        assert torch.isfinite(param).all(), name
        if name.endswith("weight"):
            # torch_geometric's own draws: glorot (GCN, GAT) or kaiming-uniform (SAGE) bounds, never zeros.
            fan_in, fan_out = param.shape[1], param.shape[0]
            bound = (6 / (fan_in + fan_out)) ** 0.5 if gnn_type != "sage" else fan_in ** -0.5
            assert 0.5 * bound < float(param.abs().max()) <= bound + 1e-6, name
    batch = neighbor_batch(model.config)
    loss = model(**batch, labels=labels_for(batch)).loss
    loss.backward()
    assert torch.isfinite(loss)
    gnn_grads = [p.grad for p in model.position_encoding.layers.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in gnn_grads) and any(g.abs().sum() > 0 for g in gnn_grads)

    # Saved and loaded again, the trained GNN comes back as it was (loaded weights are never drawn again).
    model.save_pretrained(tmp_path / "mmgl")
    reloaded = MMGLForConditionalGeneration.from_pretrained(tmp_path / "mmgl")
    for (name, before), after in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(before, after), name


def test_placeholders_receive_their_neighbours():
    model = tiny_model("self_attention", "sequence", open_gates=True)
    batch = neighbor_batch(model.config)
    captured = {}
    hook = model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        model(**batch)
    hook.remove()
    embeds = captured["inputs_embeds"]
    config = model.config
    with torch.no_grad():
        text_tokens, image_tokens = model.neighbor_projection(batch["text_neighbor_embeds"], batch["image_neighbor_embeds"])
        encoding = model.position_encoding.embeddings.weight
    for row in range(2):
        expected = []
        for slot in batch["text_neighbor_mask"][row].nonzero().flatten().tolist():
            expected.append(text_tokens[row, slot] + encoding[slot])
        for slot in batch["image_neighbor_mask"][row].nonzero().flatten().tolist():
            expected.append(image_tokens[row, slot] + encoding[config.max_text_neighbors + slot])
        positions = (batch["input_ids"][row] == NEIGHBOR_TOKEN).nonzero().flatten()
        torch.testing.assert_close(embeds[row, positions], torch.cat(expected))
        others = (batch["input_ids"][row] != NEIGHBOR_TOKEN).nonzero().flatten()
        torch.testing.assert_close(embeds[row, others], model.get_input_embeddings()(batch["input_ids"][row, others]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_real_neighbours_matter_and_padding_does_not(mode, encoding):
    model = tiny_model(mode, encoding, open_gates=True)
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        reference = model(**batch).logits
        changed_real = dict(batch, text_neighbor_embeds=batch["text_neighbor_embeds"].clone())
        changed_real["text_neighbor_embeds"][0, 1] += 1.0
        assert (model(**changed_real).logits[0] - reference[0]).abs().max() > 1e-4
        changed_padding = dict(batch, text_neighbor_embeds=batch["text_neighbor_embeds"].clone())
        changed_padding["text_neighbor_embeds"][:, 2] += 5.0  # slot 2 is padding in both rows
        changed_padding["image_neighbor_embeds"] = batch["image_neighbor_embeds"].clone()
        changed_padding["image_neighbor_embeds"][0, 1] -= 5.0  # image slot 1 is padding in row 0
        torch.testing.assert_close(model(**changed_padding).logits, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_cached_generation_equals_uncached(mode, encoding):
    model = tiny_model(mode, encoding, open_gates=True)
    batch = neighbor_batch(model.config)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=1, eos_token_id=None)
    cached = model.generate(**batch, use_cache=True, **kwargs)
    uncached = model.generate(**batch, use_cache=False, **kwargs)
    assert cached.shape == (2, batch["input_ids"].shape[1] + 6)
    assert torch.equal(cached, uncached)
    # And the neighbours steer generation: other neighbours, other logits for the first new token.
    with torch.no_grad():
        first = model(**batch).logits[:, -1]
        other = dict(batch, text_neighbor_embeds=torch.randn_like(batch["text_neighbor_embeds"]))
        assert (model(**other).logits[:, -1] - first).abs().max() > 1e-4


def test_cross_attention_key_values_computed_once_per_sequence():
    model = tiny_model("cross_attention", "sequence", open_gates=True)
    batch = neighbor_batch(model.config)
    calls = []
    block = model.model.decoder.layers[1].gated_cross_attention.cross_attn
    hook = block.k_proj.register_forward_hook(lambda *args: calls.append(1))
    model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=1, eos_token_id=None)
    hook.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("encoding", ["laplacian", "gnn"])
def test_attention_implementations_agree(encoding):
    for mode in MODES:
        config = tiny_config(mode, encoding)
        outputs = {}
        for implementation in ("eager", "sdpa"):
            torch.manual_seed(0)
            config._attn_implementation = implementation
            model = MMGLForConditionalGeneration(config).eval()
            for p in model.parameters():
                if p.dim() == 1 and p.numel() == 1:
                    p.data.fill_(1.0)  # open gates
            batch = neighbor_batch(model.config)
            with torch.no_grad():
                outputs[implementation] = model(**batch).logits
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(outputs["eager"][real], outputs["sdpa"][real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_checkpointing_gives_same_gradients(mode):
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(mode, "gnn", open_gates=True).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        batch = neighbor_batch(model.config)
        model(**batch, labels=labels_for(batch), use_cache=False).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(n.startswith("neighbor_projection") for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_forward_and_generate(mode):
    model = tiny_model(mode, "laplacian", open_gates=True)
    reference = model(**neighbor_batch(model.config)).logits
    model = model.to(torch.bfloat16)
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.dtype == torch.bfloat16
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real].float(), reference[real], atol=0.1, rtol=0.05)
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=1)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 3


def test_raw_inputs_through_frozen_encoder_match_precomputed():
    model = tiny_model(
        "self_attention", "sequence", neighbor_encoder_config=TINY_CLIP,
        text_neighbor_embed_dim=TINY_CLIP["embed_dim"], image_neighbor_embed_dim=TINY_CLIP["embed_dim"], open_gates=True,
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
    with pytest.raises(ValueError, match="either `text_neighbor_embeds` or `text_neighbor_input_ids`"):
        model(**dict(batch, text_neighbor_input_ids=text_ids))


def test_frozen_encoder_stays_frozen_while_training():
    model = tiny_model(
        "cross_attention", "gnn", neighbor_encoder_config=TINY_CLIP,
        text_neighbor_embed_dim=TINY_CLIP["embed_dim"], image_neighbor_embed_dim=TINY_CLIP["embed_dim"], open_gates=True,
    ).train()
    assert not model.neighbor_encoder.training and not model.neighbor_encoder.model.training
    batch = neighbor_batch(model.config)
    del batch["text_neighbor_embeds"], batch["image_neighbor_embeds"]
    batch["text_neighbor_input_ids"] = torch.randint(1, 49000, (2, 3, 16))
    batch["image_neighbor_pixel_values"] = torch.randn(2, 2, 3, 32, 32)
    # Flamingo-style: train only the gated blocks, projection and position encoding.
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(("neighbor_projection", "position_encoding")) or "gated_cross" in name)
    model(**batch, labels=labels_for(batch)).loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_strict_save_load_round_trip(tmp_path):
    model = tiny_model("cross_attention", "laplacian", open_gates=True)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded, info = MMGLForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    batch = neighbor_batch(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, model(**batch).logits)


# --- bad input -------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    model = tiny_model("self_attention", "gnn", open_gates=True)
    batch = neighbor_batch(model.config)
    too_few = dict(batch, input_ids=batch["input_ids"].clone())
    too_few["input_ids"][0, (too_few["input_ids"][0] == NEIGHBOR_TOKEN).nonzero()[0]] = 5
    with pytest.raises(ValueError, match=r"Row 0 .* holds 6 `<neighbor>` placeholders .* need 7"):
        model(**too_few)
    with pytest.raises(ValueError, match=r"`text_neighbor_embeds` has shape \(2, 3, 5\); expected \(2, num_neighbors, 16\)"):
        model(**dict(batch, text_neighbor_embeds=torch.randn(2, 3, 5)))
    with pytest.raises(ValueError, match="`image_neighbor_embeds` of shape .* needs `image_neighbor_mask`"):
        model(**dict(batch, image_neighbor_mask=None))
    with pytest.raises(ValueError, match=r"`text_neighbor_mask` has shape \(2, 2\); expected \(2, 3\)"):
        model(**dict(batch, text_neighbor_mask=batch["text_neighbor_mask"][:, :2]))
    with pytest.raises(ValueError, match=r"`neighbor_adjacency` has shape \(2, 4, 4\); expected \(2, 5, 5\)"):
        model(**dict(batch, neighbor_adjacency=torch.zeros(2, 4, 4)))
    with pytest.raises(ValueError, match="needs `neighbor_adjacency`"):
        model(**dict(batch, neighbor_adjacency=None))
    with pytest.raises(ValueError, match="needs a neighbour encoder"):
        raw = dict(batch, text_neighbor_input_ids=torch.zeros(2, 3, 16, dtype=torch.long))
        del raw["text_neighbor_embeds"]
        model(**raw)
    with pytest.raises(ValueError, match="placeholders but no neighbour inputs"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with pytest.raises(ValueError, match="neighbor_mode='none'"):
        MMGLForConditionalGeneration(MMGLConfig(**TINY_OPT))(**batch)


def test_config_validation():
    with pytest.raises(ValueError, match="neighbor_mode must be one of"):
        MMGLConfig(neighbor_mode="sideways")
    with pytest.raises(ValueError, match="position_encoding='laplacian' needs neighbours"):
        MMGLConfig(position_encoding="laplacian")
    with pytest.raises(ValueError, match="needs neighbor_token_id"):
        MMGLConfig(neighbor_mode="self_attention")


def test_generation_never_writes_a_placeholder():
    model = tiny_model("self_attention", "none", open_gates=True)
    with torch.no_grad():
        model.lm_head.weight[NEIGHBOR_TOKEN] += 100.0  # make the placeholder the most likely next token
    batch = neighbor_batch(model.config)
    generated = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=1, eos_token_id=None)
    assert not (generated[:, batch["input_ids"].shape[1]:] == NEIGHBOR_TOKEN).any()
