"""`--recipe paper` resolved for 1 and 2 processes: global batch 125 from the per-device batch that fits."""

import json
import math

import pytest

from processing.training.recipe import PAPER_GLOBAL_BATCH, explicit_fields, resolve_paper_recipe


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("per_device", [1, 5, 8, 25, 125])
def test_accumulation_reaches_the_global_batch(world_size, per_device):
    recipe = resolve_paper_recipe(per_device, world_size, "sa_e")
    accumulation = recipe.gradient_accumulation_steps
    assert recipe.global_batch == per_device * world_size * accumulation >= PAPER_GLOBAL_BATCH
    # The smallest accumulation that reaches 125: one step fewer would fall short.
    assert per_device * world_size * (accumulation - 1) < PAPER_GLOBAL_BATCH
    exact = recipe.global_batch == PAPER_GLOBAL_BATCH
    assert ("not reachable exactly" in recipe.lines[1]) != exact
    assert str(recipe.global_batch) in recipe.lines[1]


def test_one_and_two_processes_values():
    one = resolve_paper_recipe(25, 1, "sa_e")
    assert (one.gradient_accumulation_steps, one.global_batch) == (5, 125)
    two = resolve_paper_recipe(25, 2, "sa_e")
    assert (two.gradient_accumulation_steps, two.global_batch) == (math.ceil(125 / 50), 150)
    assert one.training_updates() == {"gradient_accumulation_steps": 5, "learning_rate": 1e-4, "max_steps": 10_000}
    assert len(one.lines) == 5


@pytest.mark.parametrize("encoding,length", [("sa_te", 1024), ("sa_e", 512), ("ca_e", 512)])
def test_source_length_by_encoding_unless_given(encoding, length):
    assert resolve_paper_recipe(5, 1, encoding).max_source_length == length
    assert resolve_paper_recipe(5, 1, encoding, {"max_source_length"}).max_source_length is None


def test_explicit_fields_are_kept():
    recipe = resolve_paper_recipe(5, 2, "ca_e", {"learning_rate", "max_steps", "gradient_accumulation_steps"}, 3)
    assert recipe.training_updates() == {}
    assert recipe.global_batch == 30 and "(given)" in recipe.lines[0]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="per-device batch"):
        resolve_paper_recipe(0, 1, "sa_e")
    with pytest.raises(ValueError, match="neighbor_encoding"):
        resolve_paper_recipe(1, 1, "bogus")


def test_explicit_fields_from_command_line_and_json(tmp_path):
    assert explicit_fields(["--max_source_length", "300", "--learning_rate=3e-4", "x"]) == {
        "max_source_length", "learning_rate"}
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"max_steps": 5, "output_dir": "o"}))
    assert explicit_fields([str(path)]) == {"max_steps", "output_dir"}


def test_small_training_set_states_the_epochs_one_step_covers(tmp_path, capsys):
    """8 training samples under the paper's global batch (4 x 32 accumulation = 128): the run says each step is
    one epoch of 8 samples, and the Trainer's own epoch count agrees (2 steps = 2 epochs)."""
    import run_summarization
    from processing.data.sample_data import generate_sample
    from processing.training.recipe import epoch_coverage_line
    from tests.test_run_summarization import base_args

    assert epoch_coverage_line(200, 4, 32, 1) is None
    generate_sample(tmp_path / "sample", num_pages=30, seed=0)
    args = base_args(tmp_path / "sample", tmp_path / "out")
    for flag in ("--do_eval", "--do_predict"):
        args.remove(flag)
    run_summarization.main(args + ["--recipe", "paper", "--neighbor_encoding", "sa_e"])
    printed = capsys.readouterr().out
    assert "recipe paper: global batch 128" in printed
    assert ("recipe paper: the training set (8 samples) is smaller than the global batch (128): every optimizer step "
            "covers one whole epoch of 8 samples, not 128") in printed
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == pytest.approx(2.0)
    assert "every optimizer step covers one epoch of 8 samples" in (tmp_path / "out" / "README.md").read_text()
