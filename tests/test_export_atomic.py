"""A run replaces --output_dir (export, card, metrics, predictions) as a whole: a kill at any stage of a re-run
leaves the previous folder or the new one, never a mix (every file hashed); what a caller keeps in the folder
survives; Trainer checkpoints stay out of it."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

import processing.atomic_write
import processing.training.export
import run_summarization
from processing.atomic_write import recover_folder
from processing.data.sample_data import generate_sample
from processing.training.outputs import keep_in_output
from tests.test_run_summarization import REPO, base_args

# Files whose bytes depend on timings or on the folder's absolute path: compared by name only.
VARYING = {"training_args.bin", "trainer_state.json", "all_results.json", "train_results.json", "predict_results.json"}


class Killed(BaseException):
    """Stands for a kill: nothing after it runs (BaseException: no `except Exception` catches it)."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The previous result (seed 1) and, in a folder of the same name, what the new run (seed 0) writes."""
    root = tmp_path_factory.mktemp("atomic")
    generate_sample(root / "sample", num_pages=30, seed=0)
    old, new = root / "old" / "out", root / "new" / "out"
    for folder, seed in ((old, "1"), (new, "0")):
        run_summarization.main(args(root / "sample", folder, seed))
    return root / "sample", hashes(old), hashes(new), old


def args(sample_dir: Path, output_dir: Path, seed: str = "0") -> list[str]:
    result = base_args(sample_dir, output_dir) + ["--context", "all", "--neighbor_encoding", "sa_e"]
    result.remove("--do_eval")
    result[result.index("--seed") + 1] = seed
    return result


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_old_or_new(folder: Path, old: dict, new: dict) -> str:
    found = hashes(folder)
    if found == old:
        return "old"
    assert set(found) == set(new), f"neither the old nor the new set of files: {sorted(set(found) ^ set(new))}"
    for name, digest in found.items():
        if name not in VARYING:
            assert digest == new[name], f"{name} is not the new run's (a mix)"
    assert found["model.safetensors"] != old["model.safetensors"]
    return "new"


def kill_at(stage: str, monkeypatch, output_dir: Path):
    """Makes the run stop dead at ``stage``."""
    def after(function):
        def wrapper(*a, **k):
            function(*a, **k)
            raise Killed(stage)
        return wrapper

    if stage == "training":
        calls = []
        original = transformers.Trainer.training_step

        def step(self, *a, **k):
            calls.append(1)
            if len(calls) == 2:
                raise Killed(stage)
            return original(self, *a, **k)

        monkeypatch.setattr(transformers.Trainer, "training_step", step)
    elif stage == "predict":
        monkeypatch.setattr(run_summarization.MMGLSummarizationTrainer, "evaluate_generation",
                            after(run_summarization.MMGLSummarizationTrainer.evaluate_generation))
    elif stage == "export":  # the model files written, the card not yet
        monkeypatch.setattr(processing.training.export, "save_for_hub", after(processing.training.export.save_for_hub))
    elif stage == "between_renames":  # the old folder moved aside, the new one not yet in place
        rename = os.rename

        def first_rename(src, dst):
            rename(src, dst)
            if os.fspath(src) == str(output_dir):
                raise Killed(stage)

        monkeypatch.setattr(os, "rename", first_rename)
    elif stage == "after_swap":  # the new folder in place, the old one not yet removed
        def carry_over(*a, **k):
            raise Killed(stage)

        monkeypatch.setattr(processing.atomic_write, "_carry_over", carry_over)


@pytest.mark.parametrize("stage,expected", [("training", "old"), ("predict", "old"), ("export", "old"),
                                            ("between_renames", "old"), ("after_swap", "new")])
def test_a_kill_at_each_stage_leaves_the_old_or_the_new_folder(runs, tmp_path, monkeypatch, stage, expected):
    sample_dir, old, new, old_folder = runs
    output_dir = tmp_path / "out"
    shutil.copytree(old_folder, output_dir)
    (output_dir / "run.log").write_text("a caller's log\n")  # not ours: kept
    old = {**old, "run.log": hashes(output_dir)["run.log"]}
    with monkeypatch.context() as patches:
        kill_at(stage, patches, output_dir)
        with pytest.raises(Killed):
            run_summarization.main(args(sample_dir, output_dir))
    recover_folder(output_dir, keep=keep_in_output)  # what the next start does first
    found = assert_old_or_new(output_dir, old, {**new, "run.log": old["run.log"]})
    assert found == expected
    assert not list(tmp_path.glob(".out.*"))  # recovery leaves no staging or retired folder


def test_a_completed_rerun_replaces_the_whole_folder_and_keeps_a_callers_files(runs, tmp_path):
    sample_dir, old, new, old_folder = runs
    output_dir = tmp_path / "out"
    shutil.copytree(old_folder, output_dir)
    (output_dir / "run.log").write_text("a caller's log\n")
    (output_dir / "eval_predictions.jsonl").write_text("stale\n")  # a previous run's: replaced, not mixed in
    run_summarization.main(args(sample_dir, output_dir))
    found = hashes(output_dir)
    found.pop("run.log")
    assert set(found) == set(new) and all(found[n] == new[n] for n in found if n not in VARYING)
    assert (output_dir / "run.log").read_text() == "a caller's log\n"
    assert not list(tmp_path.glob(".out.*"))  # no staging or retired folder left


def test_sigkill_during_predict_leaves_the_previous_folder(runs, tmp_path):
    """A real SIGKILL (no cleanup runs) in the middle of --do_predict: the previous folder is intact; the next start
    removes the staging folder the killed process left."""
    sample_dir, old, _, old_folder = runs
    output_dir = tmp_path / "out"
    shutil.copytree(old_folder, output_dir)
    driver = (
        "import os, signal, sys, run_summarization\n"
        "original = run_summarization.MMGLSummarizationTrainer.evaluate_generation\n"
        "def killed(self, split):\n"
        "    original(self, split)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "run_summarization.MMGLSummarizationTrainer.evaluate_generation = killed\n"
        "run_summarization.main(sys.argv[1:])\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", driver, *args(sample_dir, output_dir)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert hashes(output_dir) == old
    staging = list(tmp_path.glob(".out.tmp-*"))
    assert len(staging) == 1 and (staging[0] / "predict_predictions.jsonl").exists()  # the new run got that far
    recover_folder(output_dir, keep=keep_in_output)
    assert not list(tmp_path.glob(".out.*")) and hashes(output_dir) == old
