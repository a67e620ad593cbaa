"""Stage 07: 03_attention's network and recipe, trained fast and at scale.

    python 07_fast/train.py                                      # built-in drawn faces, no download
    python 07_fast/train.py --data data/fer2013.csv              # real FER2013 (see README)
    torchrun --nproc_per_node 2 07_fast/train.py --data data/fer2013.csv   # two processes, one batch
    python 07_fast/train.py --resume runs/07_fast/<run>/last.pt
    python 07_fast/eval.py --checkpoint runs/07_fast/<run>/best.pt --attention

Augmentation of whole batches on the device, mixed precision, channels_last, --compile, and data
parallelism with torchrun: the same 35-epoch recipe, in less time.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, so `import common` works from any folder

import argparse
import json
import math
import time

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler
from tqdm import tqdm

from common.checkpoint import get_rng_states, save_checkpoint, set_rng_states, write_json, write_metrics_csv
from common.data import ImageDataset, eval_transform, find_default_data, load_data
from common.distributed import (SharedStop, WeightedDistributedSampler, broadcast_object, close_distributed,
                                gather_objects, init_distributed, silence_other_processes, sum_over_processes)
from common.guard import (StopSignal, check_same_classes, epoch_progress, non_negative_int, output_dir, positive_float,
                          positive_int, resume_run, resume_steps, stop_if_diverged, stopped_progress)
from common.plots import plot_curves
from common.runfolder import claim_run_folder
from common.runtime import (UserError, count_parameters, import_sibling, loader_generator, log_scalars, open_tensorboard,
                            pick_amp_dtype, pick_device, seed_everything)
from common.tracking import finish_wandb, log_wandb, open_wandb

STAGE = Path(__file__).resolve().parent.name
model_lib = import_sibling(__file__, "model")  # by path: every stage has its own model.py
eval_lib = import_sibling(__file__, "eval")
augment_lib = import_sibling(__file__, "augment")


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="FER2013 CSV (.csv/.csv.gz) or image-folder tree; "
                                       "default: data/fer2013* if present, else the built-in faces")
    parser.add_argument("--epochs", type=positive_int, default=35, help="maximum number of epochs")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per optimizer step")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and dropout")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    parser.add_argument("--out", type=output_dir, help="run folder (default: runs/<stage>/<timestamp>)")
    parser.add_argument("--resume", help="last.pt of a stopped run: continue it in its folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else it is refused)")
    parser.add_argument("--labels", choices=["fer2013", "ferplus"], default="fer2013",
                        help="ferplus: relabel a fer2013.csv with the FER+ votes of --ferplus (8 classes)")
    parser.add_argument("--ferplus", help="path to FER+ fer2013new.csv (with --labels ferplus)")
    parser.add_argument("--ferplus-mode", choices=["majority", "probability"], default="majority",
                        help="train on the majority vote, or on the vote distribution (soft targets)")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (if installed)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log to Weights & Biases (if installed): offline unless logged in, see README")
    # stage-specific flags
    parser.add_argument("--patience", type=positive_int, default=7,
                        help="stop after this many epochs without a better validation macro-F1")
    parser.add_argument("--class-weights", action="store_true",
                        help="weight the loss by inverse class frequency (rare classes count more)")
    parser.add_argument("--balanced-sampler", action="store_true",
                        help="draw training images so that every class is seen equally often")
    parser.add_argument("--augment", choices=["light", "v3"], default="light",
                        help="light: flip, rotation and lighting; v3: 02_deeper's richer set")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                        help="mixed precision; auto: bf16 where the GPU or CPU computes it natively, else fp16 on GPUs")
    parser.add_argument("--compile", action="store_true", help="compile the model with torch.compile (slow first epoch)")
    return parser.parse_args(argv), parser


def build_train_transform(preprocessing, augment="light"):
    # New in 07_fast: the same augmentations, applied to a whole uint8 batch on the device (augment.py)
    return augment_lib.build_augment(preprocessing, augment)


def class_weights(labels, num_classes):  # inverse class frequency, scaled so that an average image weighs 1
    counts = labels.sum(dim=0) if labels.ndim == 2 else torch.bincount(labels, minlength=num_classes)  # FER+: vote shares
    return counts.sum() / (num_classes * counts.float().clamp(min=1))


def build_loaders(args, data, rank=0, world_size=1):
    train_images, train_labels = data.split("train")
    val_images, val_labels = data.split("val")
    # New in 07_fast: a dataset indexed with a list of indices returns a whole batch in one tensor operation; train
    # batches stay uint8 (4x fewer bytes to copy) until the augmentation on the device
    train_set = ImageDataset(train_images, train_labels, nn.Identity())
    val_set = ImageDataset(val_images, val_labels, eval_transform(data.preprocessing))
    weights = class_weights(train_labels, len(data.class_names))  # --balanced-sampler: each image ~ 1 / its class size
    weights = train_labels.float() @ weights if train_labels.ndim == 2 else weights[train_labels]
    # each process takes every world_size-th index of one shuffle (seed + epoch), so together they see each image once
    sampler = (WeightedDistributedSampler(weights, world_size, rank, args.seed) if args.balanced_sampler
               else DistributedSampler(train_set, world_size, rank, shuffle=True, seed=args.seed))
    batches = BatchSampler(sampler, args.batch_size // world_size, drop_last=False)  # --batch-size is the global batch
    train_loader = DataLoader(train_set, sampler=batches, batch_size=None, num_workers=args.num_workers,
                              generator=loader_generator(args.seed),  # its state marks where a stopped epoch began
                              pin_memory=torch.cuda.is_available(), persistent_workers=args.num_workers > 0)
    val_loader = DataLoader(val_set, sampler=BatchSampler(SequentialSampler(val_set), 256, drop_last=False),
                            batch_size=None, num_workers=args.num_workers)
    return train_loader, val_loader


def train_one_epoch(model, loader, criterion, optimizer, device, desc, augment, amp_dtype, scaler, progress, stop):
    """One pass over the training set; `progress` (the step, running sums) is what last.pt keeps after a Ctrl-C."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not sys.stderr.isatty() or desc is None)  # on terminals, one process
    for step, (images, labels) in resume_steps(bar, progress, stop):  # stops early after a Ctrl-C
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)  # from pinned memory
        images = augment(images).contiguous(memory_format=torch.channels_last)  # (B, C, H, W) float, stored as NHWC
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):  # convolutions in 16 bits
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp16 only: the loss is scaled up so that small gradients do not round to 0
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.detach() * len(labels)  # stays on the device: .item() would wait for the GPU every step
        targets = labels.argmax(dim=1) if labels.ndim == 2 else labels  # FER+ soft targets: (B, C) vote shares
        correct += (logits.argmax(dim=1) == targets).sum()
        seen += len(labels)
        progress["step"] = step
        if not bar.disable and step % 20 == 0:  # reading the numbers waits for the device; now and then only
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}%")
    shares = sum_over_processes([float(total_loss), float(correct), seen])  # every process's share
    progress.update({key: progress[key] + value for key, value in zip(("loss_sum", "correct", "seen"), shares)})
    stop_if_diverged(progress["loss_sum"], progress, progress["step"])  # NaN or inf; once an epoch, all processes
    return progress["loss_sum"] / progress["seen"], progress["correct"] / progress["seen"]


def main(argv=None):
    args, parser = get_args(argv)
    silence_other_processes()  # New in 07_fast: under torchrun, only rank 0 prints
    checkpoint, args = resume_run(args, parser, STAGE)  # --resume: the run's last.pt and the recipe it started with
    rank, world_size, device = init_distributed(pick_device(args.device))  # New in 07_fast: rank 0 of 1 without torchrun
    out = Path(broadcast_object(str(claim_run_folder(args, STAGE)) if rank == 0 else None))  # rank 0 claims it; locked
    args.out = str(out.resolve())  # config.json holds absolute paths, so eval and --resume work from any folder
    stop = SharedStop(StopSignal(out))  # Ctrl-C or SIGTERM: every process finishes the step, last.pt is saved
    print("args:", json.dumps(vars(args)))
    seed_everything(args.seed + rank)  # each process its own augmentation and dropout draws
    if args.batch_size % world_size:
        raise UserError(f"--batch-size {args.batch_size} does not split evenly over {world_size} processes")

    if args.data is None:
        args.data = str(find_default_data() or "builtin")
        if args.data == "builtin":
            print("note: no --data and no data/fer2013* found: training on the built-in drawn faces. "
                  "For real results put fer2013.csv from Kaggle in data/ (see README).")
    data = load_data(args.data, seed=args.seed, labels=args.labels, ferplus=args.ferplus, ferplus_mode=args.ferplus_mode)
    check_same_classes(checkpoint, data.class_names)
    train_loader, val_loader = build_loaders(args, data, rank, world_size)
    augment = build_train_transform(data.preprocessing, args.augment).to(device)

    # New in 07_fast: channels_last (NHWC) weights and images are the layout fast convolution kernels want
    model = model_lib.build_model(len(data.class_names), data.preprocessing["channels"])
    model = model.to(device, memory_format=torch.channels_last)
    weight = class_weights(data.split("train")[1], len(data.class_names)).to(device) if args.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)  # decoupled decay
    # The learning rate falls from lr to 0 along half a cosine over --epochs, so every run ends with slow, careful
    # steps. (Lowering it only when the validation loss plateaus never fired within 30 epochs on FER2013.)
    # A formula of the epoch number, so `--resume ... --epochs N` stretches the curve to the new end.
    def cosine(epoch):  # multiplies lr: 1 at the start, 0 after the last epoch
        return 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    amp_dtype = pick_amp_dtype(device, args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # DDP starts every process from rank 0's weights and averages the gradients of each step across processes
    gpu = [device] if device.type == "cuda" else None
    step_model = DistributedDataParallel(model, device_ids=gpu) if world_size > 1 else model
    step_model = torch.compile(step_model) if args.compile else step_model  # the first steps compile; later ones are faster

    args.data = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    history, start_epoch, best_f1, bad_epochs = [], 1, -1.0, 0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        optimizer.param_groups[0]["lr"] = args.lr * cosine(scheduler.last_epoch)  # on the curve of a new --epochs
        if checkpoint["scaler"]:  # empty when the stopped run did not use fp16
            scaler.load_state_dict(checkpoint["scaler"])
        history, best_f1, bad_epochs = checkpoint["history"], checkpoint["best_f1"], checkpoint["bad_epochs"]
        start_epoch = checkpoint["epoch"] + 1
        rng = checkpoint["rng"][rank] if len(checkpoint["rng"]) == world_size else get_rng_states()  # one per process
        set_rng_states(rng)  # with another count of processes, this run's fresh seeds
        checkpoint["progress"] = checkpoint.get("progress") and {**checkpoint["progress"], "rng": rng}  # this process's
    tracker = open_wandb(args, out, STAGE) if args.wandb and rank == 0 else None  # sets args.wandb_id for --resume
    if rank == 0:
        write_json(out / "config.json", vars(args))
    writer = open_tensorboard(out) if args.tensorboard and rank == 0 else None
    sizes = " ".join(f"{k} {v}" for k, v in data.sizes().items())
    precision = str(amp_dtype or torch.float32).removeprefix("torch.")
    print(f"stage {STAGE} | device {device} | {world_size} process(es), {precision} | {count_parameters(model):,} parameters | "
          f"{sizes} | classes {', '.join(data.class_names)} | seed {args.seed} | run {out}")

    for epoch in range(start_epoch, args.epochs + 1):
        train_loader.sampler.sampler.set_epoch(epoch)  # a new shuffle every epoch, the same in every process
        start = time.time()
        progress = epoch_progress(checkpoint, epoch, train_loader)  # a new epoch, or the rest of a stopped one
        desc = f"Epoch {epoch}/{args.epochs}" if rank == 0 else None
        train_loss, train_acc = train_one_epoch(step_model, train_loader, criterion, optimizer, device,
                                                desc, augment, amp_dtype, scaler, progress, stop)
        train_seconds = time.time() - start
        stopped = progress["step"] < len(train_loader)  # a signal ended the epoch midway
        if not stopped:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                val = eval_lib.evaluate(model, val_loader, device) if rank == 0 else None
            val = broadcast_object(val)  # rank 0's numbers everywhere, so that every process stops at the same epoch
            stop_if_diverged(val["loss"], progress)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()  # one step along the cosine per epoch
            seconds = time.time() - start
            improved = val["macro_f1"] > best_f1  # strictly better, so a tie keeps the earlier epoch
            best_f1 = max(best_f1, val["macro_f1"])
            # Early stopping watches the metric the best checkpoint is chosen on. The validation loss is a poor guide
            # here: as the model grows confident it rises while accuracy still climbs.
            bad_epochs = 0 if improved else bad_epochs + 1
            history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val["loss"],
                            "val_acc": val["accuracy"], "val_f1": val["macro_f1"], "lr": lr,
                            "img_per_s": len(train_loader.dataset) / train_seconds, "seconds": seconds})
        state = {"stage": STAGE, "epoch": epoch - stopped, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "best_f1": best_f1, "bad_epochs": bad_epochs, "history": history,
                 "progress": stopped_progress(progress) if stopped else None,
                 "rng": gather_objects(get_rng_states()),
                 "config": vars(args), "class_names": data.class_names, "preprocessing": data.preprocessing}
        if rank == 0:  # every process holds the same weights; one writes them
            if not stopped and improved:  # chosen on validation macro-F1, never on test; saved first, so a kill
                save_checkpoint(out / "best.pt", state)  # between the two saves cannot leave best.pt behind last.pt
            save_checkpoint(out / "last.pt", state)
            write_metrics_csv(out / "metrics.csv", history)
        stop.exit_if_requested(STAGE, out / "last.pt", progress)  # after Ctrl-C or SIGTERM: saved, so stop here
        if writer:
            log_scalars(writer, history[-1])
        if tracker:
            log_wandb(tracker, history[-1])
        row = history[-1]
        print(f"Epoch {epoch}/{args.epochs} | train loss {train_loss:.3f} acc {100 * train_acc:.1f}% | "
              f"val loss {val['loss']:.3f} acc {100 * val['accuracy']:.1f}% f1 {val['macro_f1']:.3f} | "
              f"lr {lr:.1e} | {row['img_per_s']:.0f} img/s | {seconds:.0f}s{' *' if improved else ''}", flush=True)
        if bad_epochs >= args.patience:
            print(f"early stop: validation macro-F1 has not improved for {args.patience} epochs")
            break

    if history and rank == 0:
        plot_curves(history, out / "curves.png", title=f"{STAGE} on {Path(data.source).name}")
        if tracker:  # the best checkpoint's validation confusion matrix, curves.png and best.pt as an artifact
            finish_wandb(tracker, out, model, val_loader, device, eval_lib.evaluate, data.class_names)
        best = max(history, key=lambda r: r["val_f1"])
        total = sum(r["seconds"] for r in history)
        print(f"done | best epoch {best['epoch']}: val acc {100 * best['val_acc']:.1f}% f1 {best['val_f1']:.3f} | "
              f"{len(history)} epochs, {total / len(history):.1f} s/epoch | {out / 'best.pt'}")
    stop.close()
    close_distributed()
    return history


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
