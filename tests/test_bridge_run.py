"""`run_summarization.py --neighbor_bridge perceiver / qformer` end to end: the run trains and exports; the data
report counts the bridge's latents as the neighbour tokens; the export alone, and the export loaded as Hub remote code
(`AutoModel` and the pipeline) in a fresh process that cannot import this package, reproduce the run's
predictions; a flag contradicting the exported bridge is refused."""

import json
import subprocess
import sys

import pytest

import run_summarization
from processing.data.sample_data import generate_sample
from tests.test_artifacts import data_args, predictions, train

LATENTS = 6
CELLS = [("sa_e", "perceiver", "full"), ("ca_e", "qformer", "flamingo"), ("sa_te", "qformer", "lora"),
         ("ca_e", "perceiver", "prompt")]

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    generate_sample(root, num_pages=30, seed=0)
    return root


FRESH_PROCESS = """
import json, sys
sys.path = [p for p in sys.path if p not in ('', {repo!r})]  # no package: the Hub folder's code only
from transformers import AutoModel, AutoProcessor, pipeline
folder, cases, images, cache = sys.argv[1:5]
cases = json.load(open(cases))
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
summarize = pipeline('mmgl-summarization', model=folder, trust_remote_code=True)
piped = summarize([{{'page': c['row'], 'section': c['section']}} for c in cases], batch_size=len(cases),
                  embedding_cache=cache, image_dir=images)
opened = summarize._open_embedding_cache(cache)
examples = [processor.build_example(c['row'], c['section'], embedding_cache=opened, image_dir=images,
                                    for_generation=True) for c in cases]
batch = processor.data_collator(for_generation=True)(examples)
ids = model.generate(**batch)
generated = processor.tokenizer.batch_decode(ids[:, batch['input_ids'].shape[1]:], skip_special_tokens=True)
print(json.dumps({{'pipeline': [o['summary_text'] for o in piped], 'generate': [t.strip() for t in generated],
                  'bridge': type(model.neighbor_bridge).__name__, 'module': type(model).__module__}}))
"""


@pytest.mark.parametrize("encoding,bridge,tuning", CELLS)
def test_bridged_run_exports_what_it_trained(sample_dir, tmp_path, encoding, bridge, tuning):
    out = tmp_path / "run"
    train(sample_dir, out, tuning, encoding, "--neighbor_bridge", bridge, "--bridge_num_latents", str(LATENTS),
          "--bridge_num_layers", "1", "--generation_num_beams", "2", "--no_repeat_ngram_size", "2")
    expected = predictions(out)
    assert any(expected), "the run must predict some text for the comparisons to mean anything"
    config = json.loads((out / "config.json").read_text())
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert (config["neighbor_bridge"], config["bridge_num_latents"], config["bridge_num_layers"]) == (bridge, LATENTS, 1)
    assert (processor_config["neighbor_bridge"], processor_config["bridge_num_latents"]) == (bridge, LATENTS)
    assert (out / "neighbor_bridge.py").is_file()
    report = json.loads((out / "data_report.json").read_text())
    assert report["design"]["neighbor_bridge"] == bridge
    # Every sample page has neighbours: each example's neighbours become exactly the latents.
    assert report["train"]["max_neighbor_tokens"] == report["train"]["mean_neighbor_tokens"] == LATENTS
    card = (out / "README.md").read_text()
    assert f"neighbour bridge: `{bridge}`" in card and f"`{LATENTS}`" in card

    # The export alone (its design read from its files) predicts what the run predicted.
    run_summarization.main(["--model_name_or_path", str(out), "--output_dir", str(tmp_path / "export"),
                            "--do_predict", *data_args(sample_dir)])
    assert predictions(tmp_path / "export") == expected

    # A fresh process with the Hub folder's code only: AutoModel + generate and the pipeline.
    pages = run_summarization.open_page_table(str(sample_dir / "wikiweb2m-sample.tfrecord.gz"))
    samples = run_summarization.summarization_samples(pages, split="test")[:4]
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"row": pages[p], "section": s} for p, s in samples]))
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS.format(repo=str(run_summarization.Path(run_summarization.__file__).parent)))
    result = subprocess.run(
        [sys.executable, str(script), str(out), str(cases), str(sample_dir / "images"), str(sample_dir / "cache")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
             "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["bridge"] == "MMGLNeighborBridge" and not fresh["module"].startswith("modeling_mmgl.")
    assert fresh["pipeline"] == fresh["generate"] == expected


def test_a_flag_contradicting_the_exported_bridge_is_refused(sample_dir, tmp_path):
    out = tmp_path / "run"
    train(sample_dir, out, "full", "sa_e", "--neighbor_bridge", "qformer", "--bridge_num_latents", str(LATENTS))
    for flag, value in (("--neighbor_bridge", "perceiver"), ("--bridge_num_latents", "7")):
        with pytest.raises(ValueError, match=f"{flag} .* contradicts the checkpoint's"):
            run_summarization.main(["--model_name_or_path", str(out), "--output_dir", str(tmp_path / "again"),
                                    "--do_predict", flag, value, *data_args(sample_dir)])


def test_a_bridge_without_neighbour_embeddings_is_refused(sample_dir, tmp_path):
    with pytest.raises(ValueError, match="neighbor_bridge 'perceiver' compresses neighbour embeddings"):
        train(sample_dir, tmp_path / "run", "full", "sa_te", "--context", "text_only", "--neighbor_bridge", "perceiver")
