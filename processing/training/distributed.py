"""What changes when a run spans processes, GPUs and machines (DDP, FSDP, DeepSpeed; `accelerate launch`, `torchrun`).

- `example_step_seeds`: randomness that belongs to an example (the Laplacian eigenvectors' sign flips) is seeded by
  the example and the training step, never by the process, so data parallel training equals one process.
- `gathered_state_dict` / `model_with_state_dict`: the final export is built from the full state dict gathered the
  way the Trainer's own `save_model` gathers it (FSDP full state dict, DeepSpeed ZeRO-3 16-bit consolidation), on a
  fresh copy of the model, never from one rank's shard or wrapper.
- `check_launch`: a launcher that was asked for several processes but started one.
- `prepare_on_each_node`: the main process prepares a file; a node that cannot see it (no shared file system)
  prepares its own copy once, on its local main process; every other process waits and reads.
"""
from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable

import torch

#: Key of an example's index in its data set, set by the training data set and turned into seeds by the Trainer.
EXAMPLE_INDEX = "example_index"


def example_step_seeds(seed: int, step: int, example_index: torch.Tensor) -> torch.LongTensor:
    """`(B,)` seeds, one per example: a hash of the run's `seed`, the optimizer `step` and the example's index.

    The same example at the same step gets the same seed in any process layout (one process, DDP at the same
    global batch, a resumed run), and a different one at every other step or epoch.
    """
    seeds = []
    for index in example_index.reshape(-1).tolist():
        digest = hashlib.blake2b(f"{seed}:{step}:{index}".encode(), digest_size=8).digest()
        seeds.append(int.from_bytes(digest, "little") >> 1)  # non-negative int64
    return torch.tensor(seeds, dtype=torch.long)


def is_zero3(trainer) -> bool:
    """Whether the Trainer runs DeepSpeed ZeRO stage 3 (parameters partitioned across processes)."""
    if not trainer.is_deepspeed_enabled:
        return False
    plugin = trainer.accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def check_export_gatherable(trainer) -> None:
    """Refuse, before training, a DeepSpeed ZeRO-3 setup whose full weights cannot be gathered at the end: the export
    would be partitioned placeholders (accelerate raises only at save time)."""
    if not is_zero3(trainer):
        return
    config = trainer.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
    if not config.get("stage3_gather_16bit_weights_on_model_save", False):
        raise ValueError(
            "DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save: the final export needs the full "
            "weights. Set `zero3_save_16bit_model: true` in the accelerate config (launch/deepspeed_zero3.yaml "
            "does) or `stage3_gather_16bit_weights_on_model_save: true` in the DeepSpeed JSON."
        )


def gathered_state_dict(trainer) -> dict[str, torch.Tensor]:
    """The model's full state dict, as the Trainer's `save_model` gathers it. Every process must call this (under
    FSDP and ZeRO-3 it is a collective); the main process gets every tensor, others may get an empty dict.

    - DeepSpeed: `accelerator.get_state_dict(engine)` (ZeRO-3: consolidated 16-bit weights, the frozen ones too);
    - FSDP: `accelerator.get_state_dict(model)` (a full state dict, offloaded to the CPU);
    - otherwise (one process, DDP): the unwrapped model's own state dict.
    """
    model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    return trainer.accelerator.get_state_dict(model)


def model_with_state_dict(model, state_dict: dict[str, torch.Tensor]):
    """A fresh CPU copy of `model` (an MMGL model, or a peft model over one) carrying `state_dict`.

    The copy is built from the model's config (and its peft config), not copied from its parameters: under FSDP or
    ZeRO-3 the live parameters are shards or empty placeholders. It never shares memory with the live model, so
    exporting it (merging LoRA, unwrapping) leaves the trained model as it is.
    """
    from peft import PeftModel, get_peft_model
    from transformers.initialization import no_init_weights

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    with no_init_weights():  # every weight comes from the state dict (checked below)
        fresh = type(base)(copy.deepcopy(base.config))
    fresh.tie_weights()  # skipped with the initialisation: OPT's lm_head is its input embeddings
    fresh.generation_config = copy.deepcopy(base.generation_config)
    if isinstance(model, PeftModel):
        fresh = get_peft_model(fresh, copy.deepcopy(model.peft_config[model.active_adapter]))
    expected = fresh.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    # A tied weight (OPT's lm_head and input embeddings) may come under one of its names only.
    by_storage: dict[int, set[str]] = {}
    for name, tensor in expected.items():
        by_storage.setdefault(tensor.data_ptr(), set()).add(name)
    missing = {name for name in missing if not (by_storage[expected[name].data_ptr()] - missing)}
    if missing or unexpected:
        raise ValueError(
            f"the gathered state dict does not match the model {type(fresh).__name__}: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    wrong_shape = [name for name, tensor in state_dict.items() if tuple(tensor.shape) != tuple(expected[name].shape)]
    if wrong_shape:
        raise ValueError(f"the gathered state dict holds shards, not full tensors: {wrong_shape[:5]} (e.g. "
                         f"{tuple(state_dict[wrong_shape[0]].shape)} for {tuple(expected[wrong_shape[0]].shape)})")
    fresh.load_state_dict(state_dict, strict=False)
    return fresh.eval()


def check_launch(environ: dict[str, str] | None = None) -> None:
    """Refuse a run that a launcher asked to spread over several processes but started alone.

    `accelerate launch --num_processes N` without `--multi_gpu` (or with `--cpu`) on a machine where it cannot
    start them itself runs ONE process, which would then train on everything at 1/N of the global batch. Such a
    launch is visible: accelerate's launcher (it sets `ACCELERATE_MIXED_PRECISION`) exported a rendezvous
    address (`MASTER_PORT`, set only for several processes or machines) but no world size (`WORLD_SIZE` from
    torchrun, or MPI's when accelerate starts CPU processes with mpirun).
    """
    env = os.environ if environ is None else environ
    world_size = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # as accelerate reads it
    if "ACCELERATE_MIXED_PRECISION" in env and "MASTER_PORT" in env and not any(name in env for name in world_size):
        raise ValueError(
            "accelerate launch was asked for several processes (--num_processes / --num_machines) but started this "
            "one alone, which would train on everything at a fraction of the global batch. Add --multi_gpu (also "
            "on CPU: `accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
            "--dynamo_backend no run_summarization.py ...`), use a config from launch/, or `torchrun "
            "--nproc_per_node N run_summarization.py ...`; unset MASTER_PORT for a single process."
        )


def prepare_on_each_node(args, path: str | None, prepare: Callable[[bool], object]):
    """Run `prepare(save)` so that the file at `path` is written once per file system.

    The main process prepares and saves first; then, on each node, the local main process prepares again, saving
    only when it cannot see `path` (a node without the shared file system), and the other processes wait for it
    and read what it wrote. Without `path` (nothing saved) every process prepares.

    Args:
        args (`TrainingArguments`): for the process indices and `main_process_first`.
        path (`str`, *optional*): the file `prepare` writes when asked to save.
        prepare (`Callable[[bool], object]`): called once per process with `save`; its result is returned.
    """
    if path is None or args.world_size == 1:
        return prepare(path is not None and args.process_index == 0)
    result = None
    with args.main_process_first(local=False, desc="prepare (main process)"):
        if args.process_index == 0:
            result = prepare(True)
    with args.main_process_first(local=True, desc="prepare (each node)"):
        if args.process_index != 0:
            # Decided on entering, before this node's local main process writes (the others enter after it).
            result = prepare(args.local_process_index == 0 and not os.path.exists(path))
    return result


__all__ = [
    "EXAMPLE_INDEX",
    "check_export_gatherable",
    "check_launch",
    "example_step_seeds",
    "gathered_state_dict",
    "is_zero3",
    "model_with_state_dict",
    "prepare_on_each_node",
]
