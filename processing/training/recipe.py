"""The paper's training recipe (`--recipe paper`), resolved for the machine at hand.

Global batch 125 = per-device batch x gradient accumulation x processes: the user gives the per-device batch
that fits, the accumulation is derived (rounded up, so the global batch is at least 125; the resolved global
batch is reported when 125 is not exactly reachable). lr 1e-4, 10k steps, `max_source_length` 1024 for SA-TE
(neighbour texts are tokens) and 512 for SA-E / CA-E. A field set explicitly by the user is kept.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

PAPER_GLOBAL_BATCH = 125
PAPER_LEARNING_RATE = 1e-4
PAPER_MAX_STEPS = 10_000
PAPER_MAX_SOURCE_LENGTH = {"sa_te": 1024, "sa_e": 512, "ca_e": 512}


@dataclass
class ResolvedRecipe:
    """Settings `--recipe paper` resolves to; `None` means "left as the user set it"."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int | None
    learning_rate: float | None
    max_steps: int | None
    max_source_length: int | None
    global_batch: int
    lines: list[str] = field(default_factory=list)

    def training_updates(self) -> dict:
        """The `TrainingArguments` fields to set."""
        updates = {"gradient_accumulation_steps": self.gradient_accumulation_steps,
                   "learning_rate": self.learning_rate, "max_steps": self.max_steps}
        return {k: v for k, v in updates.items() if v is not None}


def resolve_paper_recipe(per_device_batch: int, world_size: int, encoding: str, user_set=frozenset(),
                         user_accumulation: int = 1) -> ResolvedRecipe:
    """Resolves the paper's recipe.

    Args:
        per_device_batch (`int`): the per-device train batch that fits on one device.
        world_size (`int`): the number of training processes.
        encoding (`str`): the neighbour encoding (`sa_te`, `sa_e`, `ca_e`).
        user_set (`set[str]`, *optional*): argument names given explicitly (kept as given).
        user_accumulation (`int`, *optional*, defaults to 1): the accumulation, used when the user set it.
    """
    if per_device_batch < 1 or world_size < 1:
        raise ValueError(f"--recipe paper: per-device batch ({per_device_batch}) and processes ({world_size}) "
                         "must be >= 1.")
    if encoding not in PAPER_MAX_SOURCE_LENGTH:
        raise ValueError(f"--recipe paper: unknown --neighbor_encoding {encoding!r}, expected one of "
                         f"{tuple(PAPER_MAX_SOURCE_LENGTH)}.")
    per_step = per_device_batch * world_size
    if "gradient_accumulation_steps" in user_set:
        accumulation, derived = user_accumulation, None
    else:
        accumulation = derived = math.ceil(PAPER_GLOBAL_BATCH / per_step)
    recipe = ResolvedRecipe(
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=derived,
        learning_rate=None if "learning_rate" in user_set else PAPER_LEARNING_RATE,
        max_steps=None if "max_steps" in user_set else PAPER_MAX_STEPS,
        max_source_length=None if "max_source_length" in user_set else PAPER_MAX_SOURCE_LENGTH[encoding],
        global_batch=per_step * accumulation,
    )
    exact = "" if recipe.global_batch == PAPER_GLOBAL_BATCH else (
        f" (the paper's {PAPER_GLOBAL_BATCH} is not reachable exactly with this per-device batch and process count)")
    recipe.lines = [
        f"recipe paper: per-device batch {per_device_batch} x gradient accumulation {accumulation}"
        f"{' (given)' if derived is None else ''} x processes {world_size}",
        f"recipe paper: global batch {recipe.global_batch}{exact}",
        f"recipe paper: learning rate {recipe.learning_rate if recipe.learning_rate is not None else '(given)'}",
        f"recipe paper: max steps {recipe.max_steps if recipe.max_steps is not None else '(given)'}",
        f"recipe paper: max source length "
        f"{recipe.max_source_length if recipe.max_source_length is not None else '(given)'} ({encoding})",
    ]
    return recipe


def epoch_coverage_line(num_samples: int, per_device_batch: int, accumulation: int, world_size: int) -> str | None:
    """What one optimizer step covers when the training set is smaller than the global batch (the Trainer then
    steps once per epoch, on every sample once), or `None` when it is not."""
    global_batch = per_device_batch * accumulation * world_size
    if num_samples <= 0 or num_samples >= global_batch:
        return None
    return (f"the training set ({num_samples} samples) is smaller than the global batch ({global_batch}): every "
            f"optimizer step covers one whole epoch of {num_samples} samples, not {global_batch}; max_steps counts "
            "epochs")


def explicit_fields(argv: list[str]) -> set[str]:
    """Argument names given explicitly: `--name value` / `--name=value` on the command line, or the keys of a
    single JSON arguments file."""
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0]) as handle:
            return set(json.load(handle))
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}


__all__ = ["PAPER_GLOBAL_BATCH", "ResolvedRecipe", "epoch_coverage_line", "explicit_fields", "resolve_paper_recipe"]
