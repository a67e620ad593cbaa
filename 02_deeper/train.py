"""Stage 02: train a deeper CNN with BatchNorm, spatial dropout, augmentation and a schedule.

    python 02_deeper/train.py                                 # built-in drawn faces, no download
    python 02_deeper/train.py --data data/fer2013.csv         # real FER2013 (see README)
    python 02_deeper/train.py --resume runs/02_deeper/<run>/last.pt --epochs 40
    python 02_deeper/eval.py --checkpoint runs/02_deeper/<run>/best.pt

Recipe of the deeper CNN of the source notebooks (version 3): AdamW, rich augmentation, early
stopping, with the learning rate annealed along a cosine instead of lowered on a plateau.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import math
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from common.checkpoint import save_checkpoint, write_metrics_csv
from common.data import ImageDataset, eval_transform
from common.flags import add_run_flags, stage_parser
from common.guard import epoch_progress, positive_int, resume_steps, stop_if_diverged
from common.metrics import class_shares, class_weights
from common.run import RunLog, epoch_row, load_run_data, restore_training, start_run
from common.runtime import (UserError, import_sibling, loader_generator, pick_device,
                            seed_everything, seed_worker)

STAGE = Path(__file__).resolve().parent.name
LESSON = ["--epochs", "--lr", "--num-workers", "--patience",
          "build_train_transform", "build_loaders", "main"]
model_lib = import_sibling(__file__, "model")  # by path: every stage has its own model.py
eval_lib = import_sibling(__file__, "eval")


def get_args(argv=None):
    parser = stage_parser(__doc__)  # --help: this file's first line, then every flag's default
    parser.add_argument("--data", help="FER2013 CSV or folders (unset: data/fer2013*, or builtin)")
    parser.add_argument("--epochs", type=positive_int, default=30, help="maximum number of epochs")
    add_run_flags(parser)  # --batch-size, --lr, --seed, ... --wandb: the same in every stage
    parser.set_defaults(num_workers=1)  # New in 02_deeper: a worker augments while the model trains
    # stage-specific flags
    parser.add_argument("--patience", type=positive_int, default=7, help="early-stopping patience")
    parser.add_argument("--class-weights", action="store_true", help="rare classes weigh more")
    parser.add_argument("--balanced-sampler", action="store_true", help="draw classes equally")
    return parser.parse_args(argv), parser


def build_train_transform(preprocessing):
    # New in 02_deeper: version 3's augmentation; each epoch sees every face moved and relit
    move = v2.RandomAffine(
        degrees=15,
        translate=(0.1, 0.1),
        scale=(0.9, 1.1),
        shear=10,
        interpolation=v2.InterpolationMode.BILINEAR,  # nearest would turn edges into steps
    )
    return v2.Compose([
        v2.RandomHorizontalFlip(),  # a mirrored smile is still a smile
        move,
        # FER2013 faces are contrast-stretched; photos from a camera are not. Relighting each face a
        # little teaches the model that brightness and contrast are not the expression.
        v2.ColorJitter(brightness=0.2, contrast=0.2),
        eval_transform(preprocessing),  # to normalised float exactly as at test time
        v2.RandomErasing(p=0.1),  # hide a patch (a hand, a shadow) so no region is relied on alone
    ])


def build_loaders(args, data):
    train_images, train_labels = data.split("train")
    val_images, val_labels = data.split("val")
    train_set = ImageDataset(train_images, train_labels, build_train_transform(data.preprocessing))
    val_set = ImageDataset(val_images, val_labels, eval_transform(data.preprocessing))
    sampler = None
    if args.balanced_sampler:  # draw each image with its class's weight: classes come equally often
        shares = class_shares(train_labels, len(data.class_names))  # (N, C): one-hot or FER+ votes
        image_weights = shares @ class_weights(train_labels, len(data.class_names))  # (N,)
        sampler = WeightedRandomSampler(image_weights, len(image_weights))  # the global RNG draws
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        shuffle=sampler is None,
        num_workers=args.num_workers,
        worker_init_fn=seed_worker,
        generator=loader_generator(args.seed),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=args.num_workers > 0,
    )
    val_loader = DataLoader(val_set, batch_size=256, num_workers=args.num_workers)
    return train_loader, val_loader


def train_one_epoch(model, loader, criterion, optimizer, device, progress, stop):
    """One pass over the training set, summed into `progress` (last.pt keeps it after a Ctrl-C)."""
    model.train()
    bar = tqdm(loader, f"Epoch {progress['epoch']}", leave=False, disable=not sys.stderr.isatty())
    for step, (images, labels) in resume_steps(bar, progress, stop):  # ends early after a Ctrl-C
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        loss = criterion(logits, labels)
        stop_if_diverged(loss, progress, step)  # NaN or inf: stop before the update spreads it
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        targets = class_shares(labels, logits.shape[1]).argmax(dim=1)  # FER+ votes: the top class
        progress["step"] = step
        progress["loss_sum"] += loss.item() * len(labels)
        progress["correct"] += (logits.argmax(dim=1) == targets).sum().item()
        progress["seen"] += len(labels)
        bar.set_postfix(loss=progress["loss_sum"] / progress["seen"])


def main(argv=None):
    args, parser = get_args(argv)
    checkpoint, args, out, stop = start_run(args, parser, STAGE)  # --resume, run folder, Ctrl-C
    seed_everything(args.seed)
    device = pick_device(args.device)

    data = load_run_data(args, checkpoint)  # --data, else data/fer2013*, else the built-in faces
    train_loader, val_loader = build_loaders(args, data)

    model = model_lib.build_model(len(data.class_names), data.preprocessing["channels"]).to(device)
    weight = None
    if args.class_weights:
        weight = class_weights(data.split("train")[1], len(data.class_names)).to(device)
    criterion = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)  # decoupled
    # The learning rate falls from lr to 0 along half a cosine over --epochs, so every run ends
    # with slow, careful steps. (Lowering it when the validation loss plateaus never fired within
    # 30 epochs on FER2013.) A formula of the epoch, so `--resume --epochs N` stretches the curve.
    def cosine(epoch):  # multiplies lr: 1 at the start, 0 after the last epoch
        return 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)

    # A new run starts from these counters, a resumed one from those in its last.pt.
    counters = checkpoint or {"epoch": 0, "history": [], "best_f1": -1.0, "bad_epochs": 0}
    history = counters["history"]
    best_f1 = counters["best_f1"]
    bad_epochs = counters["bad_epochs"]
    restore_training(checkpoint, model, optimizer, train_loader, scheduler)  # only with --resume
    log = RunLog(STAGE, args, out, data)  # config.json; TensorBoard and W&B when asked for
    log.header(device, model)  # stage, device, parameters, split sizes, classes, seed, run folder

    for epoch in range(counters["epoch"] + 1, args.epochs + 1):
        progress = epoch_progress(checkpoint, epoch, train_loader)  # new, or a stopped epoch's rest
        started = time.time() - progress["seconds"]  # a resumed epoch: plus its time before a stop
        train_one_epoch(model, train_loader, criterion, optimizer, device, progress, stop)
        img_per_s = len(train_loader.dataset) / (time.time() - started)  # training alone
        stopped = progress["step"] < len(train_loader)  # a signal ended the epoch midway
        if not stopped:
            val = eval_lib.evaluate(model, val_loader, device)
            stop_if_diverged(val["loss"], progress)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()  # one step along the cosine per epoch
            improved = val["macro_f1"] > best_f1  # strictly better: a tie keeps the earlier epoch
            best_f1 = max(best_f1, val["macro_f1"])
            # Early stopping watches the metric best.pt is chosen on. The validation loss is a poor
            # guide here: as the model grows confident it rises while accuracy still climbs.
            bad_epochs = 0 if improved else bad_epochs + 1
            history.append(epoch_row(epoch, progress, val, lr, img_per_s, time.time() - started))
        state = {
            "epoch": epoch - stopped, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "best_f1": best_f1, "bad_epochs": bad_epochs, "history": history,
            **log.checkpoint_keys(progress, stopped, train_loader),  # stage, config, RNG states
        }
        if not stopped and improved:  # chosen on validation macro-F1, never on test. Saved first:
            save_checkpoint(out / "best.pt", state)  # a kill between the saves cannot lose it
        save_checkpoint(out / "last.pt", state)
        write_metrics_csv(out / "metrics.csv", history)
        stop.exit_if_requested(STAGE, out / "last.pt", progress)  # after Ctrl-C: saved, so stop
        log.epoch(history[-1], improved)  # TensorBoard and W&B when open; one line on stdout
        if bad_epochs >= args.patience:
            print(f"early stop: validation macro-F1 has not improved for {args.patience} epochs")
            break

    log.finish(history, model, val_loader, device, eval_lib.evaluate)  # curves.png and a summary
    stop.close()
    return history


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
