"""Demo report: metrics table of the trained runs, a plot of loss curves and metrics, one pipeline summary."""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ("predict_bleu4", "predict_rougeL", "predict_cider")


def load_run(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "predict_results.json").read_text())
    state = json.loads((run_dir / "trainer_state.json").read_text())
    losses = [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]
    return {"metrics": metrics, "losses": losses}


def main(run_dirs, plot_path):
    runs = {Path(d).name: load_run(Path(d)) for d in run_dirs}
    print(f"{'run':<16}" + "".join(f"{m.split('_')[1]:>10}" for m in METRICS))
    for name, run in runs.items():
        print(f"{name:<16}" + "".join(f"{run['metrics'][m]:>10.4f}" for m in METRICS))
    # One axis per metric: BLEU (~0.3) and CIDEr (~8) on one axis would flatten the smaller one.
    figure, axes = plt.subplots(1, 1 + len(METRICS), figsize=(4.2 * (1 + len(METRICS)), 4))
    loss_axis, metric_axes = axes[0], axes[1:]
    for name, run in runs.items():
        steps, losses = zip(*run["losses"])
        loss_axis.plot(steps, losses, label=name)
    loss_axis.set(xlabel="step", ylabel="training loss", title="Loss")
    loss_axis.legend()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, metric in zip(metric_axes, METRICS):
        values = [run["metrics"][metric] for run in runs.values()]
        bars = axis.bar(range(len(runs)), values, color=colours[: len(runs)])
        axis.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=9)
        axis.set_xticks(range(len(runs)), list(runs), fontsize=9)
        axis.set_ylim(0, max(values) * 1.15 or 1.0)  # room for the value labels
        axis.set(title=f"test {metric.split('_')[1]}")
    figure.tight_layout()
    figure.savefig(plot_path, dpi=120)
    print(f"plot: {plot_path}")
    (base_name, base), (name, last) = list(runs.items())[0], list(runs.items())[-1]
    for metric in METRICS:
        better = last["metrics"][metric] > base["metrics"][metric]
        print(f"{name} {'beats' if better else 'does NOT beat'} {base_name} on {metric.split('_')[1]}")


if __name__ == "__main__":
    main(sys.argv[1:-1], sys.argv[-1])
