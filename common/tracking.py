"""Optional experiment tracking with Weights & Biases (W&B), for `train.py --wandb`.

metrics.csv and config.json stay the record of every run; W&B adds a dashboard to share runs
and compare them. A stage's RunLog (common/run.py) calls three functions for its train.py:

    run = open_wandb(args, out, STAGE)     # start (or continue) a W&B run, log the config
    log_wandb(run, row)                    # every epoch: the row just written to metrics.csv
    finish_wandb(run, out, ...)            # at the end: confusion matrix, curves.png, best.pt

No account and no network needed: unless you have logged in (`wandb login`), the run is written
offline under <run folder>/wandb/ (or $WANDB_DIR) and uploaded later with `wandb sync <folder>`.
Without the package, a one-line note and training goes on. WANDB_MODE, WANDB_PROJECT and
WANDB_DIR work as the W&B documentation describes.
"""
import copy
import os
from pathlib import Path

from common.checkpoint import load_checkpoint
from common.metrics import classification_report
from common.plots import plot_confusion

INSTALL_HINT = "pip install -r requirements-tracking.txt"


def open_wandb(args, out, stage):
    """A W&B run for this training run, or None (with a one-line note) when W&B is unavailable.

    Sets `args.wandb_id`: config.json and every checkpoint store it, so `--resume` continues the
    same W&B run instead of starting a second one.
    """
    try:
        import wandb
    except ImportError:
        print(f"note: --wandb needs the wandb package ({INSTALL_HINT}); "
              f"continuing without it (metrics.csv has the same numbers)")
        return None
    # Online only for a logged-in user (an API key in the environment or ~/.netrc; nothing is asked);
    # everyone else gets an offline run on disk. WANDB_MODE, when set, decides instead.
    mode = os.environ.get("WANDB_MODE") or ("online" if wandb.login(prompt=False, verify=False) else "offline")
    try:
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fer-course"), group=stage, job_type="train",
                         name=f"{stage}/{Path(out).name}", id=getattr(args, "wandb_id", None), resume="allow",
                         dir=os.environ.get("WANDB_DIR", str(out)), mode=mode,
                         settings=wandb.Settings(console="off", silent=True))  # our log lines stay as they are
    except Exception as e:  # no network, a bad key: tracking is optional, training is not
        print(f"note: W&B could not start ({type(e).__name__}: {str(e).splitlines()[0][:120]}); continuing without it")
        return None
    args.wandb_id = run.id
    run.config.update({**vars(args), "stage": stage}, allow_val_change=True)  # a resumed run may change --epochs
    if run.offline:
        print(f"wandb: offline run {run.id} in {run.sync_dir} | upload it later with: wandb sync {run.sync_dir}")
    else:
        print(f"wandb: {run.url}")
    return run


def log_wandb(run, row):
    """One metrics.csv row, at step = its epoch (so a resumed run carries on at the right step)."""
    run.log(row, step=row["epoch"])


def finish_wandb(run, out, model, val_loader, device, evaluate, class_names):
    """Log the best checkpoint's validation confusion matrix, curves.png and best.pt, then close the run.

    `evaluate` is the stage's eval.evaluate; the best weights are loaded into a copy of `model`.
    """
    import wandb

    best = load_checkpoint(out / "best.pt")
    best_model = copy.deepcopy(model)
    best_model.load_state_dict(best["model"])
    val = evaluate(best_model, val_loader, device)
    report = classification_report(val["labels"], val["preds"], class_names)
    confusion = Path(run.dir) / "confusion_val.png"  # inside the W&B run folder: the run folder stays as train.py left it
    plot_confusion(report["confusion_matrix"], class_names, confusion,
                   title=f"best epoch {best['epoch']}: validation ({len(val['labels'])} images)")
    images = {"confusion_val": wandb.Image(str(confusion))}
    if (out / "curves.png").is_file():
        images["curves"] = wandb.Image(str(out / "curves.png"))
    run.log(images)  # no step: joins the last epoch's row
    run.summary.update({"best_epoch": best["epoch"], "best_val_acc": val["accuracy"], "best_val_f1": val["macro_f1"]})
    artifact = wandb.Artifact(f"{run.group}-{run.id}", type="model",
                              metadata={"epoch": best["epoch"], "class_names": class_names})
    artifact.add_file(str(out / "best.pt"))
    run.log_artifact(artifact, aliases=["best"])
    run.finish()
