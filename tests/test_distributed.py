"""What a run spread over processes depends on, checked in one process: the gathered export (with a stand-in for a
model sharded by FSDP / DeepSpeed ZeRO-3, which do not start on CPU), the per-example seeds of the Laplacian sign
flips, and which process prepares the token store on which node. The real 2-process runs are in
`tests/test_run_summarization.py`."""

import contextlib
import copy
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from processing.training.distributed import (
    example_step_seeds,
    model_with_state_dict,
    prepare_on_each_node,
)
from processing.training.export import save_hub_folder
from processing.training.tuning import apply_tuning
from tests.modeling_helpers import neighbor_batch, tiny_model
from tests.test_pipeline import make_model, make_processor

TUNINGS = ["full", "lora", "prefix", "prompt", "flamingo"]


@pytest.fixture(scope="module")
def processors():
    return {"sa_e": make_processor(), "ca_e": make_processor(neighbor_encoding="ca_e")}


@pytest.fixture(scope="module")
def processor(processors):
    return processors["sa_e"]


def tuned_model(processor, tuning: str):
    model = make_model(processor, with_encoder=False)
    if processor.neighbor_encoding == "ca_e":  # the same shape in cross-attention mode
        config = copy.deepcopy(model.config)
        config.neighbor_mode = "cross_attention"
        torch.manual_seed(0)
        model = type(model)(config)
    args = types.SimpleNamespace(tuning=tuning, lora_r=4, lora_alpha=8, num_virtual_tokens=3)
    model = apply_tuning(model, args)
    # Trained-looking weights: the LoRA B matrices and the gates start at zero, which would hide a lost tensor.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    return model


def trainer_for(model, processor, output_dir: Path):
    from transformers import Seq2SeqTrainingArguments

    from run_summarization import MMGLSummarizationTrainer

    args = Seq2SeqTrainingArguments(output_dir=str(output_dir), report_to="none", use_cpu=True)
    return MMGLSummarizationTrainer(model=model, args=args, processing_class=processor,
                                    data_collator=processor.data_collator())


def shard_in_place(model) -> None:
    """What DeepSpeed ZeRO-3 leaves in each process's module: every parameter an empty placeholder (FSDP leaves
    shards); the weights exist only spread over the processes."""
    for param in model.parameters():
        param.data = torch.empty(0, dtype=param.dtype)


def tensors(folder: Path, name: str = "model.safetensors") -> dict:
    return load_file(folder / name)


@pytest.mark.parametrize("tuning", TUNINGS)
def test_export_of_a_sharded_model_equals_the_single_process_export(processors, tuning, tmp_path, monkeypatch):
    """`save_model()` gathers the full state dict (here from a stand-in for the collective: the weights the
    processes together hold) and exports a fresh copy carrying it: the same folder, tensor for tensor, as exporting
    the unsharded model; the live (sharded) model is left untouched. Before, the export was written from the rank's
    own module: placeholders under ZeRO-3, a shard or a wrapper under FSDP."""
    processor = processors["ca_e" if tuning == "flamingo" else "sa_e"]
    model = tuned_model(processor, tuning)
    save_hub_folder(copy.deepcopy(model), processor, tmp_path / "single")  # one process: the module is complete
    trainer = trainer_for(model, processor, tmp_path / "sharded")
    full = {name: tensor.clone() for name, tensor in trainer.accelerator.get_state_dict(trainer.model).items()}
    shard_in_place(trainer.model)
    gathered = []
    monkeypatch.setattr(trainer.accelerator, "get_state_dict",
                        lambda model, unwrap=True: gathered.append(model) or full)
    trainer.save_model()
    assert gathered == [trainer.model]

    single, sharded = tensors(tmp_path / "single"), tensors(tmp_path / "sharded")
    assert single.keys() == sharded.keys() and len(single) > 10
    for name in single:
        assert torch.equal(single[name], sharded[name]), name
    assert any(t.abs().sum() > 0 for name, t in sharded.items() if "neighbor_projection" in name)
    if tuning in ("prefix", "prompt"):  # the trained virtual tokens are part of the exported model
        assert "virtual_tokens.embedding.weight" in sharded
    assert not (tmp_path / "sharded" / "adapter").exists()  # LoRA merged: no adapter beside the weights
    assert all(param.numel() == 0 for param in trainer.model.parameters())  # the live model kept as it was
    assert (tmp_path / "sharded" / "training_args.bin").exists()


def test_every_process_joins_the_gather_and_only_the_main_one_writes(processor, tmp_path, monkeypatch):
    from transformers import Seq2SeqTrainingArguments

    trainer = trainer_for(tuned_model(processor, "full"), processor, tmp_path / "out")
    gathered = []
    monkeypatch.setattr(trainer.accelerator, "get_state_dict", lambda model, unwrap=True: gathered.append(model) or {})
    monkeypatch.setattr(Seq2SeqTrainingArguments, "should_save", property(lambda self: False))  # another rank
    trainer.save_model()
    assert len(gathered) == 1 and not (tmp_path / "out" / "model.safetensors").exists()


def test_a_state_dict_that_is_not_the_full_model_is_refused(processor):
    model = tuned_model(processor, "full")
    state = model.state_dict()
    name = "model.decoder.layers.0.fc1.weight"
    shard = {**state, name: state[name][: state[name].shape[0] // 2]}
    with pytest.raises(ValueError, match=f"holds shards, not full tensors: \\['{name}'\\]"):
        model_with_state_dict(model, shard)
    with pytest.raises(ValueError, match=f"missing \\['{name}'\\]"):
        model_with_state_dict(model, {k: v for k, v in state.items() if k != name})
    # A tied weight given under one of its names is enough (OPT's lm_head is its input embeddings).
    copy_ = model_with_state_dict(model, {k: v for k, v in state.items() if k != "lm_head.weight"})
    assert torch.equal(copy_.lm_head.weight, state["model.decoder.embed_tokens.weight"])


# ---------------------------------------------------------------------------------------------- LPE sign flips


def test_sign_flips_belong_to_the_example_and_the_step():
    """With seeds from (run seed, step, example index), an example gets the same flips whatever batch it is in,
    at whatever position, whatever the process's own random state; another step draws other flips."""
    model = tiny_model("self_attention", "laplacian", lpe_k=3).train()
    encoding = model.position_encoding
    generator = torch.Generator().manual_seed(0)
    eigenvectors = torch.randn(4, 5, 3, generator=generator)
    states, mask, positions = torch.zeros(4, 5, 8), torch.ones(4, 5), torch.zeros(4, 5, dtype=torch.long)

    def encode(rows, step):
        seeds = example_step_seeds(42, step, torch.tensor(rows))
        torch.manual_seed(len(rows) * 1000 + step)  # each call from a different global random state
        return encoding(states[rows], mask[rows], positions[rows], None, eigenvectors[rows], seeds)

    full = encode([0, 1, 2, 3], step=7)
    assert torch.equal(encode([3, 1], step=7), full[[3, 1]])  # another batch, other positions
    assert torch.equal(encode([2], step=7), full[[2]])
    later = encode([0, 1, 2, 3], step=8)
    assert not torch.equal(later, full)
    assert torch.equal(encode([1, 0, 3, 2], step=8), later[[1, 0, 3, 2]])
    # Each row is the projection of its eigenvectors with some of their signs flipped, and nothing else.
    import itertools

    for row in range(4):
        for output in (full[row], later[row]):
            matches = [signs for signs in itertools.product((1.0, -1.0), repeat=3)
                       if torch.allclose(encoding.projection(eigenvectors[row] * torch.tensor(signs)), output)]
            assert len(matches) == 1
    model.eval()  # no flips at evaluation
    assert torch.allclose(encoding(states, mask, positions, None, eigenvectors, None),
                          encoding.projection(eigenvectors))


def test_model_loss_with_seeds_does_not_depend_on_the_global_random_state():
    model = tiny_model("self_attention", "laplacian", lpe_k=2).train()
    batch = neighbor_batch(model.config)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    seeds = example_step_seeds(0, 3, torch.tensor([10, 11]))
    losses = []
    for state in range(4):
        torch.manual_seed(state)
        losses.append(model(**batch, laplacian_sign_seeds=seeds).loss.item())
    assert len(set(losses)) == 1
    unseeded = set()
    for state in range(8):
        torch.manual_seed(state)
        unseeded.add(model(**batch).loss.item())
    assert len(unseeded) > 1  # without seeds: the process's own generator


def test_example_step_seeds():
    indices = torch.tensor([0, 1, 2, 1])
    seeds = example_step_seeds(0, 5, indices)
    assert seeds.dtype == torch.long and (seeds >= 0).all() and seeds[1] == seeds[3] and len(set(seeds[:3].tolist())) == 3
    assert torch.equal(seeds, example_step_seeds(0, 5, indices))
    assert not torch.equal(seeds, example_step_seeds(0, 6, indices))
    assert not torch.equal(seeds, example_step_seeds(1, 5, indices))


# ---------------------------------------------------------------------------------------------- token store per node


@pytest.mark.parametrize("shared", [True, False])
def test_token_store_is_prepared_once_per_file_system(tmp_path, shared):
    """2 machines x 2 processes. The main process writes the store; the other machine's first process writes its
    own copy only when it cannot see that file (no shared file system); everyone else reads."""
    node_paths = [tmp_path / "node0" / "store.bin", (tmp_path / "node0" if shared else tmp_path / "node1") / "store.bin"]
    for path in node_paths:
        path.parent.mkdir(exist_ok=True)
    saves = {}

    def process(rank: int):
        node, local = divmod(rank, 2)
        path = node_paths[node]
        args = types.SimpleNamespace(world_size=4, process_index=rank, local_process_index=local,
                                     main_process_first=lambda local=True, desc="": contextlib.nullcontext())

        def prepare(save: bool):
            saves[rank] = save
            if save:
                path.write_bytes(b"ids")
            return rank

        assert prepare_on_each_node(args, str(path), prepare) == rank

    # The order `main_process_first` imposes: the main process, then each machine's first process, then the rest.
    for rank in (0, 2, 1, 3):
        process(rank)
    assert saves == {0: True, 1: False, 2: not shared, 3: False}
    assert all(path.exists() for path in node_paths)


def test_token_store_without_a_file_or_in_one_process(tmp_path):
    calls = []
    args = types.SimpleNamespace(world_size=1, process_index=0, local_process_index=0)
    prepare_on_each_node(args, str(tmp_path / "store.bin"), calls.append)
    prepare_on_each_node(args, None, calls.append)
    assert calls == [True, False]
