"""What a model card says about training, recorded by the run itself in every checkpoint and export.

`MMGLRunRecord` is a stateful Trainer callback (`transformers.ExportableState`): its state is saved in
`trainer_state.json` (`stateful_callbacks`) with every `checkpoint-N` and with the export, and read back when a
run resumes. It holds the run's arguments (design, tuning, data, training setup, world size), the sum of the
training losses of every step so far (so a resumed run reports its loss over the whole run, not over the resumed
steps only) and the resumes. `read_run_record` reads it from any saved folder, so `--export` from a checkpoint
writes the setup that trained it, not the exporting command's defaults.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

RECORD_NAME = "MMGLRunRecord"
# TrainingArguments fields a card reports.
TRAINING_FIELDS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_steps",
                   "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
                   "optim", "bf16", "fp16")


def run_arguments(model_args, mmgl_args, data_args, training_args) -> dict:
    """The arguments of a run as plain JSON values: `{"model", "mmgl", "data", "training", "world_size"}`."""
    def plain(args):
        return json.loads(json.dumps(dataclasses.asdict(args), default=str))

    training = {name: getattr(training_args, name, None) for name in TRAINING_FIELDS}
    return {"model": plain(model_args), "mmgl": plain(mmgl_args), "data": plain(data_args),
            "training": json.loads(json.dumps(training, default=str)),
            "world_size": int(getattr(training_args, "world_size", 1) or 1)}


class MMGLRunRecord(TrainerCallback, ExportableState):
    """The run's record (see the module docstring). `trainer` is set after the Trainer is built: the record reads
    the losses it has accumulated when a checkpoint is saved."""

    def __init__(self, arguments: dict | None = None):
        self.arguments = arguments or {}
        self.loss_sum_before = 0.0  # training loss summed over the steps of earlier sessions (before a resume)
        self.steps_before = 0
        self.resumes: list[dict] = []
        self.trainer = None
        self.final_loss_sum = None  # set by `finish` once training is over

    def session_loss_sum(self) -> float:
        """Training loss summed over the steps of this session so far (what the Trainer accumulates)."""
        trainer = self.trainer
        if trainer is None:
            return 0.0
        total = float(getattr(trainer, "_total_loss_scalar", 0.0) or 0.0)
        pending = getattr(trainer, "_tr_loss", None)  # since the last log
        return total + (float(pending.item()) if pending is not None else 0.0)

    def state(self) -> dict:
        loss_sum = self.final_loss_sum if self.final_loss_sum is not None else \
            self.loss_sum_before + self.session_loss_sum()
        return {"args": {}, "attributes": {"arguments": self.arguments, "loss_sum": loss_sum, "resumes": self.resumes}}

    def on_train_begin(self, args, state, control, **kwargs):
        # On resume the Trainer has loaded the checkpoint's state: take the earlier sessions' losses and arguments.
        saved = (state.stateful_callbacks or {}).get(RECORD_NAME)
        if state.global_step > 0:
            attributes = (saved or {}).get("attributes", {}) if isinstance(saved, dict) else {}
            self.loss_sum_before = float(attributes.get("loss_sum", _logged_loss_sum(state.log_history)))
            self.steps_before = state.global_step
            self.resumes = list(attributes.get("resumes", [])) + [
                {"checkpoint": str(args.resume_from_checkpoint or ""), "step": state.global_step}]

    def on_save(self, args, state, control, **kwargs):
        # A peft checkpoint gets a filled card instead of peft's template.
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and (checkpoint / "adapter_config.json").is_file():
            from processing.training.model_card import write_adapter_card

            write_adapter_card(checkpoint, self.state()["attributes"], {"global_step": state.global_step,
                                                                        "max_steps": state.max_steps,
                                                                        "epoch": state.epoch})

    def finish(self, global_step: int, session_loss: float, session_steps: int) -> float:
        """Records the end of training; returns the mean training loss over every step of the run
        (`session_loss`: the Trainer's `train_loss`, a mean over this session's `session_steps`)."""
        self.final_loss_sum = self.loss_sum_before + session_loss * session_steps
        return self.final_loss_sum / max(global_step, 1)

    def store(self, state) -> None:
        """Writes the record into `state` (a `TrainerState` about to be saved with the export)."""
        state.stateful_callbacks[RECORD_NAME] = self.state()


def _logged_loss_sum(log_history: list[dict]) -> float:
    """A checkpoint without a record (older runs): the training loss summed from its logged intervals."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total


def read_trainer_state(folder: str | Path | None) -> dict | None:
    """`trainer_state.json` of a saved folder (a checkpoint or an export), or `None`."""
    if not folder:
        return None
    path = Path(folder).expanduser() / "trainer_state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}).") from None


def read_run_record(trainer_state: dict | None) -> dict | None:
    """The `MMGLRunRecord` attributes saved in a `trainer_state.json` dict, or `None`."""
    if not trainer_state:
        return None
    saved = (trainer_state.get("stateful_callbacks") or {}).get(RECORD_NAME)
    return saved.get("attributes") if isinstance(saved, dict) else None


__all__ = ["MMGLRunRecord", "RECORD_NAME", "read_run_record", "read_trainer_state", "run_arguments"]
