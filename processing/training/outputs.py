"""Where a run writes, and how its results replace a previous run's.

- `--output_dir` is the run's result: the exported model (a complete Hub folder, when the run trains or
  `--export` is given), its card, the metrics files, the predictions, the data report and the TensorBoard logs. It
  is built in a staging folder beside it and swapped in as a whole at the end (`ResultsFolder`,
  `processing.atomic_write.replace_folder`): a crash or a kill at any point (during training, during
  `--do_predict`, during the export) leaves the previous result complete or the new one complete, never a mix.
- The Trainer's working files (`checkpoint-N/` with optimizer states, `runs/` while training, the first stage,
  the unmerged base model that peft checkpoints apply to) live in `--checkpoint_dir`, by default
  `<output_dir>-checkpoints` beside it, never inside the Hub folder; `--resume_from_checkpoint` takes them
  from there.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import weakref
from pathlib import Path

from processing.atomic_write import recover_folder, replace_folder, staging_folder

logger = logging.getLogger(__name__)

# What an MMGL run writes in --output_dir (any version of it): replaced as a whole. Anything else found there (a log
# another program writes into the folder, a user's file) is kept: moved into the new folder after the swap.
RUN_OUTPUT_PATTERNS = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
    "*.py", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "chat_template.*", "processor_config.json", "preprocessor_config.json", "README.md",
    "*_results.json", "*_predictions.jsonl", "data_report.json", "trainer_state.json", "training_args.bin",
    "adapter_config.json", "runs", "text_neighbor_tokenizer", "adapter", "first_stage", "base_model", "__pycache__",
)
CHECKPOINT_PATTERN = "checkpoint-*"


def is_run_output(name: str) -> bool:
    """Whether an entry of --output_dir is something an MMGL run writes there (and a new result replaces)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in RUN_OUTPUT_PATTERNS)


def keep_in_output(name: str) -> bool:
    """Entries of a previous --output_dir that move into the new one: everything an MMGL run does not write, and
    Trainer checkpoints of runs from before checkpoints had their own folder (kept, with a warning)."""
    return not is_run_output(name)


def default_checkpoint_dir(output_dir: str | os.PathLike) -> str:
    """`<output_dir>-checkpoints`, beside the Hub folder."""
    out = os.path.abspath(os.path.expanduser(os.fspath(output_dir)))
    return f"{out}-checkpoints"


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_folders(output_dir: str, checkpoint_dir: str, model_name_or_path: str | None,
                         writes_model: bool) -> None:
    """Refuses, before any work, folders that would destroy what the run reads or mix checkpoints into the Hub
    folder, naming the arguments."""
    if _inside(checkpoint_dir, output_dir) or _inside(output_dir, checkpoint_dir):
        raise ValueError(f"--checkpoint_dir {checkpoint_dir} and --output_dir {output_dir} must not contain each "
                         "other: --output_dir is replaced as a whole at the end (it is the Hub folder), and Trainer "
                         "checkpoints stay out of it.")
    if model_name_or_path and os.path.isdir(os.path.expanduser(model_name_or_path)):
        model = os.path.abspath(os.path.expanduser(model_name_or_path))
        if _inside(model, output_dir) and not writes_model:
            raise ValueError(
                f"--output_dir {output_dir} holds the model being evaluated (--model_name_or_path {model_name_or_path})"
                ": the results replace --output_dir as a whole, so the model would be lost. Give another "
                "--output_dir, or add --export to write the model there again with the new results.")


class ResultsFolder:
    """The staging folder of a run's result, swapped into --output_dir by `finish`.

    Only the process that saves (`should_save`) stages anything; the others get `path` `None`.
    """

    def __init__(self, output_dir: str | os.PathLike, should_save: bool = True):
        self.output_dir = os.path.abspath(os.path.expanduser(os.fspath(output_dir)))
        self.path = None
        if should_save:
            recover_folder(self.output_dir, keep=keep_in_output)  # what a killed run left beside it
            self.path = staging_folder(self.output_dir)
            # A run that stops with an error leaves the previous result as it was, and no staging folder.
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.path, True)

    def take_logs(self, checkpoint_dir: str | os.PathLike) -> None:
        """TensorBoard logs written in the checkpoint folder while training go with the result (`runs/`): moved
        when the folder holds nothing else (no checkpoint to resume from), else copied (a resumed run adds to them)."""
        runs = Path(checkpoint_dir) / "runs"
        if self.path is None or not runs.is_dir():
            return
        if all(p.name in ("runs", "first_stage") for p in Path(checkpoint_dir).iterdir()):
            shutil.move(str(runs), str(Path(self.path) / "runs"))
        else:
            shutil.copytree(runs, Path(self.path) / "runs", dirs_exist_ok=True)

    def finish(self) -> None:
        """Swaps the complete result into --output_dir (old entries another program keeps there move along)."""
        if self.path is None:
            return
        if os.path.isdir(self.output_dir):
            legacy = sorted(n for n in os.listdir(self.output_dir) if fnmatch.fnmatch(n, CHECKPOINT_PATTERN))
            if legacy:
                logger.warning(f"{self.output_dir} holds Trainer checkpoints of an earlier run ({', '.join(legacy)}); "
                               "they are kept, but checkpoints now go to --checkpoint_dir: move them out of the Hub "
                               "folder.")
        replace_folder(self.path, self.output_dir, keep=keep_in_output)
        self._cleanup.detach()
        self.path = None


def remove_if_empty(folder: str | os.PathLike) -> None:
    """Removes `folder` and its empty sub-folders when nothing was written there (no checkpoint, no log)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


__all__ = ["ResultsFolder", "check_output_folders", "default_checkpoint_dir", "is_run_output", "keep_in_output",
           "remove_if_empty"]
