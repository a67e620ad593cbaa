"""The plumbing of a training run that every stage's main() calls in the same few places, so that
its train.py shows the recipe: starting the run, finding its data, putting a resumed run back
where it stopped, the metrics of an epoch, and what the run reports beside the checkpoints and
metrics.csv that train.py writes itself.

    checkpoint, args, out, stop = start_run(args, parser, STAGE)  # --resume, run folder, Ctrl-C
    data = load_run_data(args, checkpoint)  # --data, or data/fer2013*, or the built-in faces
    restore_training(checkpoint, model, optimizer, train_loader)  # --resume: where it stopped
    log = RunLog(STAGE, args, out, data)  # config.json; TensorBoard and W&B when asked for
    log.header(device, model)  # stage, device, parameters, split sizes, classes, seed, run folder
    history.append(epoch_row(epoch, progress, val, lr, img_per_s, seconds))  # a metrics.csv row
    state = {"epoch": ..., "model": ..., **log.checkpoint_keys(progress, stopped, train_loader)}
    log.epoch(history[-1], improved)  # TensorBoard, W&B, then the epoch's line on stdout
    log.finish(history, model, val_loader, device, eval_lib.evaluate)  # curves.png, W&B, summary

The epoch line is for people (tests/conftest.py's LOG_LINE reads it back); metrics.csv holds the
same numbers for plots and comparisons:

    Epoch 3/30 | train loss 1.234 acc 52.1% | val loss 1.301 acc 50.2% f1 0.455 | lr 1.0e-03 | ...
"""
import json
from pathlib import Path

from common.checkpoint import get_rng_states, set_rng_states, write_json
from common.data import find_default_affectnet, find_default_data, load_data
from common.guard import StopSignal, check_same_classes, resume_run, stopped_progress
from common.plots import plot_curves
from common.runfolder import claim_run_folder
from common.runtime import count_parameters, log_scalars, open_tensorboard
from common.tracking import finish_wandb, log_wandb, open_wandb

# Said when a run falls back on the built-in faces, so nobody mistakes their numbers for real ones.
FER2013_NOTE = ("note: no --data and no data/fer2013* found: training on the built-in drawn faces. "
                "For real results put fer2013.csv from Kaggle in data/ (see README).")
AFFECTNET_NOTE = ("note: training on the built-in 8-class colour faces (no data/affectnet/ found "
                  "or --data builtin). For real results put Kaggle's AffectNet in data/affectnet/ "
                  "(see README).")


def start_run(args, parser, stage):
    """(checkpoint, args, out, stop) for a run about to start, and its arguments printed.

    checkpoint: with --resume, the run's last.pt (else None), and args the recipe it was started
    with. out: the run folder, locked for this run: a new runs/<stage>/<time>/, the resumed run's,
    or --out (args.out becomes its absolute path, so eval and --resume work from any folder).
    stop: after Ctrl-C or SIGTERM the step finishes, last.pt is saved and the run says how to go on.
    """
    checkpoint, args = resume_run(args, parser, stage)
    out = claim_run_folder(args, stage)
    args.out = str(out.resolve())
    stop = StopSignal(out)
    print("args:", json.dumps(vars(args)))
    return checkpoint, args, out, stop


def load_run_data(args, checkpoint, dataset="fer2013", min_relfc=None):
    """The FaceData a run trains on: --data, else what data/ holds, else the built-in faces (with a
    note saying so). dataset="affectnet" looks for data/affectnet/ and turns `--data builtin` into
    the built-in 8-class colour faces. --labels ferplus relabels FER2013 with the FER+ votes;
    min_relfc keeps AffectNet's confident rows. A resumed run must find the classes it learned.

    args.data becomes what was loaded, a builtin name or an absolute path, for config.json.
    """
    if dataset == "affectnet":
        if args.data is None:
            args.data = str(find_default_affectnet() or "builtin-affectnet")
        elif args.data == "builtin":
            args.data = "builtin-affectnet"
        if args.data == "builtin-affectnet":
            print(AFFECTNET_NOTE)
    elif args.data is None:
        args.data = str(find_default_data() or "builtin")
        if args.data == "builtin":
            print(FER2013_NOTE)
    relabel = {"labels": args.labels, "ferplus": args.ferplus, "ferplus_mode": args.ferplus_mode}
    data = load_data(args.data, seed=args.seed, min_relfc=min_relfc, **relabel)
    check_same_classes(checkpoint, data.class_names)
    if Path(args.data).exists():
        args.data = str(Path(args.data).resolve())  # config.json holds absolute paths
    return data


def restore_training(checkpoint, model, optimizer, loader=None, scheduler=None):
    """Put a resumed run back where its last.pt left it; nothing for a new run (checkpoint None).

    The weights and the optimizer's moments and step counts; with `loader`, also every random
    state and the loader's shuffling generator, so the next epoch draws the same batches,
    augmentations and dropout as the run would have drawn had it never stopped. With `scheduler`
    (a LambdaLR), its epoch count, and the learning rate its formula gives at that epoch.
    """
    if not checkpoint:
        return
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if loader is not None:
        set_rng_states(checkpoint["rng"])
        loader.generator.set_state(checkpoint["rng"]["loader"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        # The optimizer came back with the rate of the stopped run's curve. `--resume --epochs N`
        # stretches the curve, so set the rate the new one gives at this epoch.
        epoch = scheduler.last_epoch
        for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs,
                                          scheduler.lr_lambdas):
            group["lr"] = base_lr * factor(epoch)


def epoch_row(epoch, progress, val, lr, img_per_s, seconds):
    """One epoch's metrics.csv row: the training sums of `progress`, the validation numbers of
    eval.evaluate, the learning rate the epoch trained at, its speed and its time."""
    return {
        "epoch": epoch,
        "train_loss": progress["loss_sum"] / progress["seen"],
        "train_acc": progress["correct"] / progress["seen"],
        "val_loss": val["loss"],
        "val_acc": val["accuracy"],
        "val_f1": val["macro_f1"],
        "lr": lr,
        "img_per_s": img_per_s,
        "seconds": seconds,
    }


class RunLog:
    """The reports of one training run in `out`. With write=False (the processes other than rank 0
    under torchrun) it writes no file and opens no tracker; its lines still go to stdout."""

    def __init__(self, stage, args, out, data, write=True):
        self.stage = stage
        self.args = args
        self.out = out
        self.data = data
        self.write = write
        self.tracker = None
        self.writer = None
        if write:
            # W&B first: it sets args.wandb_id, kept in config.json so --resume continues that run
            self.tracker = open_wandb(args, out, stage) if args.wandb else None
            write_json(out / "config.json", vars(args))
            self.writer = open_tensorboard(out) if args.tensorboard else None

    def header(self, device, model, extra=None):
        """One line before the first epoch; `extra` goes after the device (07_fast: processes)."""
        sizes = " ".join(f"{split} {size}" for split, size in self.data.sizes().items())
        parts = [
            f"stage {self.stage}",
            f"device {device}",
            extra,
            f"{count_parameters(model):,} parameters",
            sizes,
            f"classes {', '.join(self.data.class_names)}",
            f"seed {self.args.seed}",
            f"run {self.out}",
        ]
        print(" | ".join(part for part in parts if part is not None))

    def checkpoint_keys(self, progress, stopped, loader):
        """What every checkpoint holds beside the recipe's own state: the stage, the config, the
        classes and preprocessing that eval.py rebuilds the model with, and where a run goes on.

        `stopped`: a signal ended the epoch midway; `progress` (with the random states of that
        moment) lets --resume finish it. The random states and the loader's shuffling generator
        let the next epoch draw exactly what it would have drawn without the stop.
        """
        return {
            "stage": self.stage,
            "progress": stopped_progress(progress) if stopped else None,
            "rng": {**get_rng_states(), "loader": loader.generator.get_state()},
            "config": vars(self.args),
            "class_names": self.data.class_names,
            "preprocessing": self.data.preprocessing,
        }

    def epoch(self, row, improved):
        """One metrics.csv row to TensorBoard and W&B (when open), and as one line on stdout."""
        if self.writer:
            log_scalars(self.writer, row)
        if self.tracker:
            log_wandb(self.tracker, row)
        line = (f"Epoch {row['epoch']}/{self.args.epochs} | "
                f"train loss {row['train_loss']:.3f} acc {100 * row['train_acc']:.1f}% | "
                f"val loss {row['val_loss']:.3f} acc {100 * row['val_acc']:.1f}% "
                f"f1 {row['val_f1']:.3f} | lr {row['lr']:.1e} | "
                f"{row['img_per_s']:.0f} img/s | {row['seconds']:.0f}s")
        print(line + (" *" if improved else ""), flush=True)  # * marks a new best.pt

    def finish(self, history, model, val_loader, device, evaluate):
        """curves.png, the W&B run closed with the best model's confusion matrix, and one summary
        line. `evaluate` is the stage's eval.evaluate. Nothing when no epoch was completed."""
        if not history or not self.write:
            return
        title = f"{self.stage} on {Path(self.data.source).name}"
        plot_curves(history, self.out / "curves.png", title=title)
        if self.tracker:  # the best model's confusion matrix, curves.png and best.pt as an artifact
            class_names = self.data.class_names
            finish_wandb(self.tracker, self.out, model, val_loader, device, evaluate, class_names)
        best = max(history, key=lambda row: row["val_f1"])
        per_epoch = sum(row["seconds"] for row in history) / len(history)
        print(f"done | best epoch {best['epoch']}: val acc {100 * best['val_acc']:.1f}% "
              f"f1 {best['val_f1']:.3f} | {len(history)} epochs, {per_epoch:.1f} s/epoch | "
              f"{self.out / 'best.pt'}")
