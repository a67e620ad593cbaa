"""Stage 07: 03_attention's network and recipe, trained fast and at scale.

    python 07_fast/train.py                                   # built-in drawn faces, no download
    python 07_fast/train.py --data data/fer2013.csv           # real FER2013 (see README)
    torchrun --nproc_per_node 2 07_fast/train.py --data data/fer2013.csv   # 2 processes, 1 batch
    python 07_fast/train.py --resume runs/07_fast/<run>/last.pt
    python 07_fast/eval.py --checkpoint runs/07_fast/<run>/best.pt --attention

Augmentation of whole batches on the device, mixed precision, channels_last, --compile, and data
parallelism with torchrun: the same 35-epoch recipe, in less time.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import math
import time

import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler
from tqdm import tqdm

from common.checkpoint import get_rng_states, save_checkpoint, write_metrics_csv
from common.data import ImageDataset, eval_transform
from common.flags import add_run_flags, stage_parser
from common.guard import epoch_progress, positive_int, resume_steps, stop_if_diverged
from common.metrics import class_shares, class_weights
from common.run import RunLog, epoch_row, load_run_data, restore_training
from common.runtime import UserError, import_sibling, loader_generator, seed_everything

STAGE = Path(__file__).resolve().parent.name
LESSON = ["--num-workers", "build_train_transform", "build_loaders", "train_one_epoch", "main"]
model_lib = import_sibling(__file__, "model")  # by path: every stage has its own model.py
eval_lib = import_sibling(__file__, "eval")
augment_lib = import_sibling(__file__, "augment")  # New in 07_fast: augmentation on the device
ddp = import_sibling(__file__, "ddp")  # New in 07_fast: several processes with torchrun
amp_lib = import_sibling(__file__, "precision")  # New in 07_fast: which dtype autocast uses


def get_args(argv=None):
    parser = stage_parser(__doc__)  # --help: this file's first line, then every flag's default
    parser.add_argument("--data", help="FER2013 CSV or folders (unset: data/fer2013*, or builtin)")
    parser.add_argument("--epochs", type=positive_int, default=35, help="maximum number of epochs")
    add_run_flags(parser)  # --batch-size, --lr, --seed, ... --wandb: the same in every stage
    # stage-specific flags
    parser.add_argument("--patience", type=positive_int, default=7, help="early-stopping patience")
    parser.add_argument("--class-weights", action="store_true", help="rare classes weigh more")
    parser.add_argument("--balanced-sampler", action="store_true", help="draw classes equally")
    parser.add_argument("--augment", choices=["light", "v3"], default="light", help="v3: 02's set")
    parser.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "off"],
        default="auto",
        help="mixed precision; auto: bf16 where computed natively, else fp16 on GPUs",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile (slow start)")
    return parser.parse_args(argv), parser


def build_train_transform(preprocessing, augment="light"):
    # New in 07_fast: the same augmentations, applied to a whole uint8 batch on the device
    return augment_lib.build_augment(preprocessing, augment)


def build_loaders(args, data, rank=0, world_size=1):
    train_images, train_labels = data.split("train")
    val_images, val_labels = data.split("val")
    # New in 07_fast: a dataset indexed with a list of indices returns a whole batch in one tensor
    # operation; train batches stay uint8 (4x fewer bytes to copy) until augmented on the device
    train_set = ImageDataset(train_images, train_labels, nn.Identity())
    val_set = ImageDataset(val_images, val_labels, eval_transform(data.preprocessing))
    # each process takes every world_size-th index of one shuffle (seed + epoch): together they
    # see each image once
    if args.balanced_sampler:  # draw each image with its class's weight: classes come equally often
        shares = class_shares(train_labels, len(data.class_names))  # (N, C): one-hot or FER+ votes
        image_weights = shares @ class_weights(train_labels, len(data.class_names))  # (N,)
        sampler = ddp.WeightedDistributedSampler(image_weights, world_size, rank, args.seed)
    else:
        sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=args.seed)
    batches = BatchSampler(sampler, args.batch_size // world_size, drop_last=False)  # global batch
    train_loader = DataLoader(
        train_set,
        sampler=batches,
        batch_size=None,
        num_workers=args.num_workers,
        generator=loader_generator(args.seed),  # its state marks where a stopped epoch began
        pin_memory=torch.cuda.is_available(),
        persistent_workers=args.num_workers > 0,
    )
    val_batches = BatchSampler(SequentialSampler(val_set), 256, drop_last=False)
    val_loader = DataLoader(
        val_set,
        sampler=val_batches,
        batch_size=None,
        num_workers=args.num_workers,
    )
    return train_loader, val_loader


def train_one_epoch(model, loader, criterion, optimizer, device, desc, augment, amp_dtype, scaler,
                    progress, stop):
    """One pass over the training set, summed into `progress` (last.pt keeps it after a Ctrl-C)."""
    model.train()
    total_loss = 0.0
    correct = 0
    seen = 0
    show = sys.stderr.isatty() and desc is not None  # on terminals, in one process
    bar = tqdm(loader, desc, leave=False, disable=not show)
    for step, (images, labels) in resume_steps(bar, progress, stop):  # ends early after a Ctrl-C
        images = images.to(device, non_blocking=True)  # from pinned memory
        labels = labels.to(device, non_blocking=True)
        images = augment(images).contiguous(memory_format=torch.channels_last)  # float, as NHWC
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)  # convolutions in 16 bits
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp16 only: scaled up so small gradients do not round to 0
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.detach() * len(labels)  # stays on the device: .item() waits for the GPU
        targets = class_shares(labels, logits.shape[1]).argmax(dim=1)  # FER+ votes: the top class
        correct += (logits.argmax(dim=1) == targets).sum()
        seen += len(labels)
        progress["step"] = step
        if show and step % 20 == 0:  # reading the numbers waits for the device; now and then only
            bar.set_postfix(loss=float(total_loss / seen))
    shares = ddp.sum_over_processes([float(total_loss), float(correct), seen])  # all processes
    progress["loss_sum"] += shares[0]
    progress["correct"] += shares[1]
    progress["seen"] += shares[2]
    stop_if_diverged(progress["loss_sum"], progress, progress["step"])  # NaN or inf, once an epoch


def main(argv=None):
    args, parser = get_args(argv)
    # New in 07_fast: this process's rank among world_size processes (rank 0 of 1 without torchrun)
    checkpoint, args, out, stop, rank, world_size, device = ddp.start_run(args, parser, STAGE)
    seed_everything(args.seed + rank)  # each process its own augmentation and dropout draws

    data = load_run_data(args, checkpoint)  # --data, else data/fer2013*, else the built-in faces
    train_loader, val_loader = build_loaders(args, data, rank, world_size)
    augment = build_train_transform(data.preprocessing, args.augment).to(device)

    # New in 07_fast: channels_last (NHWC) weights and images suit fast convolution kernels
    model = model_lib.build_model(len(data.class_names), data.preprocessing["channels"])
    model = model.to(device, memory_format=torch.channels_last)
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
    amp_dtype = amp_lib.pick_amp_dtype(device, args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step_model = ddp.wrap_model(model, device, world_size, args.compile)  # DDP; compiled if asked

    # A new run starts from these counters, a resumed one from those in its last.pt.
    counters = checkpoint or {"epoch": 0, "history": [], "best_f1": -1.0, "bad_epochs": 0}
    history = counters["history"]
    best_f1 = counters["best_f1"]
    bad_epochs = counters["bad_epochs"]
    restore_training(checkpoint, model, optimizer, scheduler=scheduler)  # only with --resume
    ddp.restore_process_state(checkpoint, scaler, rank, world_size)  # loss scale, random states
    log = RunLog(STAGE, args, out, data, write=rank == 0)  # one process writes files and logs
    precision = str(amp_dtype or torch.float32).removeprefix("torch.")
    log.header(device, model, f"{world_size} process(es), {precision}")

    for epoch in range(counters["epoch"] + 1, args.epochs + 1):
        train_loader.sampler.sampler.set_epoch(epoch)  # a new shuffle, the same in every process
        progress = epoch_progress(checkpoint, epoch, train_loader)  # new, or a stopped epoch's rest
        started = time.time() - progress["seconds"]  # a resumed epoch: plus its time before a stop
        desc = f"Epoch {epoch}/{args.epochs}" if rank == 0 else None  # a progress bar on rank 0
        train_one_epoch(
            step_model,
            train_loader,
            criterion,
            optimizer,
            device,
            desc,
            augment,
            amp_dtype,
            scaler,
            progress,
            stop,
        )
        img_per_s = len(train_loader.dataset) / (time.time() - started)  # training alone
        stopped = progress["step"] < len(train_loader)  # a signal ended the epoch midway
        if not stopped:
            # rank 0's numbers everywhere: every process stops at the same epoch
            val = ddp.evaluate_rank0(eval_lib.evaluate, model, val_loader, device, amp_dtype, rank)
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
            "scaler": scaler.state_dict(),
            "best_f1": best_f1, "bad_epochs": bad_epochs, "history": history,
            **log.checkpoint_keys(progress, stopped, train_loader),  # stage, config, RNG states
            "rng": ddp.gather_objects(get_rng_states()),  # New in 07_fast: one entry per process
        }
        if rank == 0:  # every process holds the same weights; one writes them
            if not stopped and improved:  # chosen on validation macro-F1, never on test. First:
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
    ddp.close_distributed()
    return history


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
