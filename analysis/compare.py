"""Compare finished runs side by side: a Markdown table and a bar chart.

    python -m analysis.compare runs/*/*                         # every run folder
    python -m analysis.compare runs/01_baseline/a runs/02_deeper/b --out docs/compare.png

Reads each run folder as train.py and eval.py leave it: config.json (data, recipe), metrics.csv
(one row per epoch), best.pt (stage, model) and, when present, eval_test/report.json (the test
split, evaluated once). The "command" column rebuilds the train.py call from config.json (the
flags that differ from that stage's defaults), so every row of a results table says how it was made.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for `python analysis/compare.py`

import argparse
import json

import numpy as np

from common.checkpoint import load_checkpoint, read_metrics_csv
from common.plots import plt, save_figure  # plt: pyplot set to write files only
from common.runtime import REPO_ROOT, RUNS_DIR, UserError, count_parameters, import_sibling

NOT_RECIPE = {"data", "out", "resume", "device", "num_workers", "tensorboard", "wandb"}  # flags that do not change results


def stage_module(stage, name):
    """The stage's own train.py / eval.py, or None for a stage this checkout does not have."""
    path = REPO_ROOT / stage / f"{name}.py"
    return import_sibling(path, name) if path.is_file() else None


def count_from_checkpoint(checkpoint):
    """Trainable parameters: rebuilt with the stage's own model when it exists, else counted from the
    state dict without BatchNorm's running statistics (buffers, not parameters)."""
    eval_lib = stage_module(checkpoint["stage"], "eval")
    if eval_lib is not None:
        return count_parameters(eval_lib.load_model(checkpoint))
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(t.numel() for k, t in checkpoint["model"].items() if not k.endswith(skip))


def train_command(stage, config):
    """`python <stage>/train.py --data ... --flag value` with only the flags that differ from the defaults."""
    train_lib = stage_module(stage, "train")
    defaults = vars(train_lib.get_args([])[0]) if train_lib else {}
    parts = [f"python {stage}/train.py"]
    if config.get("data") not in (None, "builtin"):
        parts.append(f"--data {config['data']}")
    for key, value in config.items():
        if key in NOT_RECIPE or key not in defaults or value == defaults[key] or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def read_run(folder):
    """One table row from a run folder; UserError if it is not one."""
    folder = Path(folder)
    missing = [name for name in ("config.json", "metrics.csv", "best.pt") if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder}: not a finished run folder (no {', '.join(missing)})")
    config = json.loads((folder / "config.json").read_text())
    history = read_metrics_csv(folder / "metrics.csv")
    checkpoint = load_checkpoint(folder / "best.pt")
    best = max(history, key=lambda row: row["val_f1"])  # the epoch best.pt holds
    row = {
        "run": folder.name,
        "stage": checkpoint["stage"],
        "data": "builtin" if config.get("data") in (None, "builtin") else Path(config["data"]).name,
        "parameters": count_from_checkpoint(checkpoint),
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "val_acc": best["val_acc"],
        "val_f1": best["val_f1"],
        "test_acc": None,
        "test_f1": None,
        "s_per_epoch": sum(r["seconds"] for r in history) / len(history),
        "img_per_s": sum(r["img_per_s"] for r in history) / len(history),
        "command": train_command(checkpoint["stage"], config),
    }
    report = folder / "eval_test" / "report.json"
    if report.is_file():
        test = json.loads(report.read_text())
        row["test_acc"], row["test_f1"] = test["accuracy"], test["macro_f1"]
    return row


def percent(value):
    return "–" if value is None else f"{100 * value:.1f}%"


def f1(value):
    return "–" if value is None else f"{value:.3f}"


def markdown_table(rows):
    lines = ["| run | stage | data | parameters | epochs (best) | val acc | val macro-F1 | test acc | test macro-F1 "
             "| s/epoch | img/s | command |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['stage']} | {r['data']} | {r['parameters']:,} | {r['epochs']} ({r['best_epoch']}) "
                     f"| {percent(r['val_acc'])} | {f1(r['val_f1'])} | {percent(r['test_acc'])} | {f1(r['test_f1'])} "
                     f"| {r['s_per_epoch']:.1f} | {r['img_per_s']:.0f} | `{r['command']}` |")
    return "\n".join(lines)


def plot_comparison(rows, path):
    """Grouped bars per run: validation and (when evaluated) test accuracy and macro-F1."""
    metrics = [("val_acc", "val accuracy"), ("val_f1", "val macro-F1"), ("test_acc", "test accuracy"),
               ("test_f1", "test macro-F1")]
    metrics = [(key, label) for key, label in metrics if any(r[key] is not None for r in rows)]
    x = np.arange(len(rows))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(rows), 4.0))
    for k, (key, label) in enumerate(metrics):
        values = [r[key] if r[key] is not None else 0 for r in rows]
        bars = ax.bar(x + (k - (len(metrics) - 1) / 2) * width, values, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.2f}" if r[key] is not None else "" for v, r in zip(values, rows)], fontsize=7)
    ax.set_xticks(x, [f"{r['stage']}\n{r['data']}\n{r['run']}" for r in rows], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy / macro-F1")
    ax.set_title("stages compared (validation: best epoch by macro-F1)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (runs/<stage>/<run>); others are skipped with a note")
    parser.add_argument("--out", default=str(RUNS_DIR / "compare.png"), help="bar chart PNG")
    args = parser.parse_args(argv)
    rows = []
    for folder in args.runs:
        try:
            rows.append(read_run(folder))
        except UserError as e:  # `runs/*/*` may match folders that are not runs (an explore output)
            print(f"note: skipped {e}", file=sys.stderr)
    if not rows:
        raise UserError(f"none of the {len(args.runs)} folder(s) given is a run folder with config.json, "
                        f"metrics.csv and best.pt; train a stage first")
    rows.sort(key=lambda r: (r["stage"], r["data"], r["run"]))
    print(markdown_table(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plot_comparison(rows, args.out)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
