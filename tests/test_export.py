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
