"""Gate initialisers of the gated cross-attention blocks (IDEFICS' `alpha_initializer`), the gates' own learning
rate in the Trainer's optimizer, and the gate values logged."""

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM, Seq2SeqTrainingArguments

from modeling_mmgl import MMGLConfig
from processing.training.gates import gate_values, is_gate_parameter, separate_gate_group
from tests.modeling_helpers import TINY_OPT, neighbor_batch, tiny_config, tiny_model


def _gates(model):
    return {n: p for n, p in model.named_parameters() if is_gate_parameter(n)}


def _opt_logits(batch):
    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(**TINY_OPT)).eval()
    with torch.no_grad():
        return opt, opt(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_zeros_is_the_default_and_equals_opt_at_init_bit_for_bit():
    assert MMGLConfig().alpha_initializer == "zeros"
    model = tiny_model("cross_attention", "sequence")
    gates = _gates(model)
    assert len(gates) == 4 and all(float(p.abs().max()) == 0.0 for p in gates.values())
    batch = neighbor_batch(model.config)
    opt, plain = _opt_logits(batch)
    model.load_state_dict(opt.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, plain)


@pytest.mark.parametrize("initializer, extra", [("ones", {}), ("normal", {"alphas_initializer_range": 0.5})])
def test_ones_and_normal_open_the_gates_and_differ_from_opt(initializer, extra):
    model = tiny_model("cross_attention", "sequence", alpha_initializer=initializer, **extra)
    values = torch.cat([p.detach().flatten() for p in _gates(model).values()])
    if initializer == "ones":
        assert torch.equal(values, torch.ones(4))
    else:
        assert (values != 0).all() and (values != 1).all() and len(set(values.tolist())) == 4
    batch = neighbor_batch(model.config)
    opt, plain = _opt_logits(batch)
    model.load_state_dict(opt.state_dict(), strict=False)
    with torch.no_grad():
        assert (model(**batch).logits - plain).abs().max() > 1e-4


def test_normal_draws_with_the_given_range():
    std = 0.3
    model = tiny_model("cross_attention", "sequence", alpha_initializer="normal", alphas_initializer_range=std,
                       num_hidden_layers=40, cross_attention_interval=1)
    values = torch.cat([p.detach().flatten() for p in _gates(model).values()])
    assert len(values) == 80 and 0.2 < float(values.std()) < 0.4


def test_initializer_is_validated():
    with pytest.raises(ValueError, match="alpha_initializer must be one of"):
        tiny_config("cross_attention", alpha_initializer="uniform")
    with pytest.raises(ValueError, match="alphas_initializer_range must be > 0"):
        tiny_config("cross_attention", alpha_initializer="normal")


def test_saved_gates_load_as_saved_whatever_the_initializer(tmp_path):
    model = tiny_model("cross_attention", "sequence", alpha_initializer="ones")
    with torch.no_grad():
        for p in _gates(model).values():
            p.fill_(0.25)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config.alpha_initializer == "ones"
    assert all(float(p) == 0.25 for p in _gates(loaded).values())


def test_gate_learning_rate_reaches_the_optimizers_parameter_groups(tmp_path):
    from run_summarization import MMGLSummarizationTrainer

    model = tiny_model("cross_attention", "sequence").train()
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, warmup_steps=0,
                                    report_to="none", use_cpu=True)
    trainer = MMGLSummarizationTrainer(model=model, args=args, gate_learning_rate=0.05)
    optimizer = trainer.create_optimizer()
    gate_ids = {id(p) for p in _gates(model).values()}
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-3, 0.05]
    assert {id(p) for p in groups[-1]["params"]} == gate_ids and groups[-1]["weight_decay"] == 0.0
    assert not any(id(p) in gate_ids for g in groups[:-1] for p in g["params"])
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once
    scheduler = trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
    optimizer.step()
    scheduler.step()
    assert groups[-1]["lr"] / groups[0]["lr"] == pytest.approx(50.0)  # one schedule, scaled
    # Without the flag: the Trainer's own two groups.
    plain = MMGLSummarizationTrainer(model=model, args=args).create_optimizer()
    assert len(plain.param_groups) == 2


def test_gate_values_are_logged_with_the_training_loss(tmp_path):
    from run_summarization import MMGLSummarizationTrainer

    model = tiny_model("cross_attention", "sequence", alpha_initializer="ones")
    assert gate_values(model) == {"gate_1_cross_attn": pytest.approx(0.761594), "gate_1_dense": pytest.approx(0.761594),
                                  "gate_3_cross_attn": pytest.approx(0.761594), "gate_3_dense": pytest.approx(0.761594)}
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = MMGLSummarizationTrainer(model=model, args=args)
    trainer.log({"loss": 1.0})
    trainer.log({"eval_loss": 1.0})
    assert trainer.state.log_history[0]["gate_3_dense"] == pytest.approx(0.761594)
    assert "gate_3_dense" not in trainer.state.log_history[1]
    assert gate_values(tiny_model("self_attention")) == {}


def test_separate_gate_group_leaves_a_model_without_gates_alone():
    model = tiny_model("self_attention")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert separate_gate_group(optimizer, model, 0.1) == 0 and len(optimizer.param_groups) == 1
