"""The exported model IS the trained model: prefix / prompt virtual tokens carried by the MMGL model itself and LoRA
merged give the peft model's logits, loss and generations, also after a save / load round trip."""

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

from modeling_mmgl import MMGLForConditionalGeneration
from processing.training.export import trained_model
from tests.modeling_helpers import labels_for, neighbor_batch, tiny_model

MMGL_MODULES = ["neighbor_projection", "position_encoding"]
PEFT_CONFIGS = {
    "prefix": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, modules_to_save=MMGL_MODULES),
    "prompt": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, modules_to_save=MMGL_MODULES),
    "lora": lambda: LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                               modules_to_save=MMGL_MODULES),
}
GENERATE = dict(max_new_tokens=6, do_sample=False, pad_token_id=1, eos_token_id=None)


def trained_peft_model(mode: str, method: str):
    """A peft model whose adapter (and MMGL modules) moved away from their initial values, so a dropped or
    untrained adapter would show."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(mode, "sequence"), PEFT_CONFIGS[method]())
    batch = neighbor_batch(model.config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch, labels=labels_for(batch)).loss.backward()
        optimizer.step()
    return model.eval(), batch


@pytest.mark.parametrize("mode", ["self_attention", "cross_attention"])
@pytest.mark.parametrize("method", ["prefix", "prompt", "lora"])
def test_exported_model_computes_what_the_peft_model_computes(mode, method, tmp_path):
    peft_model, batch = trained_peft_model(mode, method)
    labels = labels_for(batch)
    with torch.no_grad():
        expected = peft_model(**batch, labels=labels)
        expected_ids = peft_model.generate(**batch, **GENERATE)
    plain = trained_model(peft_model)
    assert type(plain) is MMGLForConditionalGeneration
    plain.save_pretrained(tmp_path)
    reloaded = MMGLForConditionalGeneration.from_pretrained(tmp_path).eval()
    if method != "lora":
        assert reloaded.config.virtual_tokens == method and reloaded.config.num_virtual_tokens == 3
    for model in (plain, reloaded):
        with torch.no_grad():
            got = model(**batch, labels=labels)
            got_ids = model.generate(**batch, **GENERATE)
        # peft's prompt tuning returns logits for the virtual tokens too; the model's own are aligned with the input.
        expected_logits = expected.logits[:, -got.logits.shape[1]:]
        assert got.logits.shape[1] == batch["input_ids"].shape[1]
        atol = 1e-5 if method == "lora" else 0  # merged weights round differently; virtual tokens are exact
        torch.testing.assert_close(got.logits, expected_logits, atol=atol, rtol=0)
        torch.testing.assert_close(got.loss, expected.loss, atol=atol, rtol=0)
        assert torch.equal(got_ids, expected_ids)
    # The virtual tokens matter: without them the model computes something else.
    if method != "lora":
        reloaded.virtual_tokens = None
        with torch.no_grad():
            assert (reloaded(**batch).logits - expected.logits[:, -batch["input_ids"].shape[1]:]).abs().max() > 1e-3


def test_prefix_model_without_cache_generates_as_with_cache():
    """peft 0.21's prefix tuning breaks with use_cache=False; the model's own prefix is put in every fresh cache."""
    peft_model, batch = trained_peft_model("self_attention", "prefix")
    plain = trained_model(peft_model)
    with torch.no_grad():
        assert torch.equal(plain.generate(**batch, use_cache=True, **GENERATE),
                           plain.generate(**batch, use_cache=False, **GENERATE))


def test_decoding_settings_model_then_file_then_flags(tmp_path):
    """The run's decoding settings: the model's generation config, a --generation_config file (or folder) over it,
    the flags over both; greedy with 64 new tokens when nobody says otherwise."""
    from transformers import GenerationConfig

    from processing.training.generation import resolve_generation_config

    model_config = GenerationConfig(eos_token_id=2, suppress_tokens=[99])
    default = resolve_generation_config(model_config, pad_token_id=1, eos_token_id=2)
    assert (default.max_new_tokens, default.num_beams, default.do_sample, default.suppress_tokens) == (64, 1, False, [99])
    GenerationConfig(num_beams=3, no_repeat_ngram_size=2, max_new_tokens=10).save_pretrained(tmp_path)
    for given in (tmp_path, tmp_path / "generation_config.json"):
        from_file = resolve_generation_config(model_config, str(given))
        assert (from_file.num_beams, from_file.no_repeat_ngram_size, from_file.max_new_tokens) == (3, 2, 10)
    flags = resolve_generation_config(model_config, str(tmp_path), max_new_tokens=5, num_beams=1,
                                      no_repeat_ngram_size=4)
    assert (flags.max_new_tokens, flags.num_beams, flags.no_repeat_ngram_size) == (5, 1, 4)
    recorded = resolve_generation_config(flags)  # an exported model's own settings are the default next time
    assert (recorded.max_new_tokens, recorded.no_repeat_ngram_size) == (5, 4)
    assert model_config.max_new_tokens is None  # the model's own object is left alone
    with pytest.raises(FileNotFoundError, match="--generation_config .*missing"):
        resolve_generation_config(model_config, str(tmp_path / "missing"))


def test_adapter_checkpoint_without_its_base_is_a_clear_error(tmp_path):
    import json

    from processing.training.checkpoint_design import read_checkpoint_design

    checkpoint = tmp_path / "run-checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(FileNotFoundError, match=r"adapter_config.json: base_model_name_or_path .*gone.* is not a model "
                                                r"folder here, and there is no .*base_model"):
        read_checkpoint_design(str(checkpoint))


def test_output_folders_that_would_lose_or_mix_things_are_refused(tmp_path):
    from processing.training.outputs import check_output_folders

    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match="must not contain each other"):
        check_output_folders(out, str(tmp_path / "out" / "checkpoints"), None, True)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="holds the model being evaluated"):
        check_output_folders(out, out + "-checkpoints", out, writes_model=False)
    check_output_folders(out, out + "-checkpoints", out, writes_model=True)  # --export rewrites it: fine
