"""Stage 07's data parallelism with `torchrun`: joining the process group, starting the run on
every process, sharing numbers between processes.

torchrun starts one copy of a training script per GPU (or per CPU share) and tells each its place
in environment variables: RANK (0 .. WORLD_SIZE-1 over all machines), WORLD_SIZE, LOCAL_RANK (its
number on this machine, which picks its GPU), MASTER_ADDR and MASTER_PORT (where rank 0 listens).
Each process trains on its own share of every batch; DistributedDataParallel averages the
gradients, so all copies take the same step and hold the same weights.

Started without torchrun, every function here does the single-process thing (rank 0 of 1).
last.pt keeps every process's random states, and --resume gives each process its own back
(restore_process_rng).

    checkpoint, args, out, stop, rank, world_size, device = start_run(args, parser, STAGE)
    step_model = wrap_model(model, device, world_size, args.compile)  # DDP, compiled if asked
"""
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from common.checkpoint import get_rng_states, set_rng_states
from common.guard import StopSignal, resume_run
from common.runfolder import claim_run_folder
from common.runtime import UserError, pick_device


def start_run(args, parser, stage):
    """common.run.start_run for each of torchrun's processes, with this process's place:
    (checkpoint, args, out, stop, rank, world_size, device).

    Rank 0 alone claims (and locks) the run folder, then tells the others its name. `stop` makes
    every process stop after the same step when any one of them gets Ctrl-C or SIGTERM.
    """
    silence_other_processes()  # under torchrun, only rank 0 prints
    checkpoint, args = resume_run(args, parser, stage)  # --resume: its last.pt and its recipe
    rank, world_size, device = init_distributed(pick_device(args.device))
    folder = None
    if rank == 0:
        folder = str(claim_run_folder(args, stage))
    out = Path(broadcast_object(folder))
    args.out = str(out.resolve())  # absolute, so eval and --resume work from any folder
    stop = SharedStop(StopSignal(out))
    print("args:", json.dumps(vars(args)))
    if args.batch_size % world_size:
        raise UserError(f"--batch-size {args.batch_size} does not split evenly over "
                        f"{world_size} processes")
    return checkpoint, args, out, stop, rank, world_size, device


def wrap_model(model, device, world_size, compile_it):
    """What takes the training steps: `model` itself, wrapped in DDP for several processes (which
    starts every process from rank 0's weights and averages each step's gradients), compiled
    with --compile (the first steps compile; later ones run faster). Checkpoints keep `model`'s
    weights."""
    step_model = model
    if world_size > 1:
        gpu = [device] if device.type == "cuda" else None
        step_model = DistributedDataParallel(step_model, device_ids=gpu)
    if compile_it:
        step_model = torch.compile(step_model)
    return step_model


def restore_process_state(checkpoint, scaler, rank, world_size):
    """--resume, beyond common.run.restore_training: the fp16 loss scale and this process's random
    states. Nothing for a new run."""
    if not checkpoint:
        return
    if checkpoint["scaler"]:  # empty when the stopped run did not use fp16
        scaler.load_state_dict(checkpoint["scaler"])
    restore_process_rng(checkpoint, rank, world_size)


def evaluate_rank0(evaluate, model, loader, device, amp_dtype, rank):
    """Rank 0 evaluates (in the training precision) and every process gets its numbers, so all
    of them decide alike about early stopping and the best epoch."""
    val = None
    if rank == 0:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            val = evaluate(model, loader, device)
    return broadcast_object(val)


def silence_other_processes():
    """Processes other than rank 0 print nothing from here on (their stdout goes to /dev/null):
    one log, written by the process that also writes the run folder. Errors still reach stderr
    from every process."""
    if int(os.environ.get("RANK", 0)) > 0:
        sys.stdout = open(os.devnull, "w")


def init_distributed(device):
    """Join torchrun's process group and return (rank, world_size, this process's device).

    The backend is NCCL between GPUs and gloo between CPU processes.
    """
    if "RANK" not in os.environ:  # started as `python train.py`
        return 0, 1, device
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"torchrun training runs on CUDA GPUs or the CPU, not on {device.type}; "
                        f"use --device cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def close_distributed():
    """Leave the process group (a no-op without torchrun)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def restore_process_rng(checkpoint, rank, world_size):
    """--resume: this process's random states from last.pt, which keeps one entry per process.

    Resumed with as many processes as before, each takes back its own states, so the run goes on
    as it would have; with another count, each keeps the fresh seeds of this run. A stopped epoch
    goes on with the states this process now holds.
    """
    rng = get_rng_states()
    if len(checkpoint["rng"]) == world_size:
        rng = checkpoint["rng"][rank]
    set_rng_states(rng)
    if checkpoint.get("progress"):
        checkpoint["progress"] = {**checkpoint["progress"], "rng": rng}


def broadcast_object(obj):
    """Rank 0's `obj` on every process (anything picklable); `obj` itself without torchrun."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj):
    """A list with every process's `obj`, in rank order; [obj] without torchrun."""
    if not dist.is_initialized():
        return [obj]
    boxes = [None] * dist.get_world_size()
    dist.all_gather_object(boxes, obj)
    return boxes


def sum_over_processes(values):
    """Add a list of numbers across all processes (the loss sums and image counts of each share)."""
    if not dist.is_initialized():
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)  # sum by default
    return total.tolist()


# A gloo group: a yes/no between processes travels on the CPU, without waiting for the GPUs.
_flag_group = None


def any_process(flag):
    """True on every process when `flag` is true on any one of them; `flag` without torchrun."""
    global _flag_group
    if not dist.is_initialized():
        return flag
    if _flag_group is None:  # made the first time; every process reaches this line at the same step
        _flag_group = dist.new_group(backend="gloo")
    vote = torch.tensor([int(flag)])
    dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=_flag_group)
    return bool(vote.item())


def resume_launcher():
    """How to start the processes again: python for one, the same torchrun for several on one
    machine; across machines, torchrun with the options each machine was started with."""
    if not dist.is_initialized():
        return "python"
    world_size = dist.get_world_size()
    if int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) == world_size:
        return f"torchrun --standalone --nproc_per_node {world_size}"
    return "torchrun <each machine's options, as before>"


class SharedStop:
    """common.guard.StopSignal for processes that must stop together: a Ctrl-C or SIGTERM that
    reaches any process stops every one after the same step (a process left running would wait for
    the others forever). Without torchrun it is the StopSignal itself."""

    def __init__(self, stop):
        self.stop = stop

    @property
    def requested(self):
        return any_process(self.stop.requested)

    def exit_if_requested(self, stage, last_pt, progress):
        if not self.requested:
            return
        if self.stop.signum is None:  # the signal reached another process: stop as if sent SIGTERM
            self.stop.signum = signal.SIGTERM
        launcher = resume_launcher()
        close_distributed()
        self.stop.exit_if_requested(stage, last_pt, progress, launcher)

    def close(self):
        self.stop.close()


class WeightedDistributedSampler(DistributedSampler):
    """DistributedSampler that draws indices with replacement in proportion to `weights`.

    torch's WeightedRandomSampler has no notion of processes. Here every process makes the same
    draw (same seed + epoch) and keeps every world_size-th index from its rank on, as
    DistributedSampler does with its shuffle; `set_epoch` changes the draw each epoch.
    """

    def __init__(self, weights, num_replicas=1, rank=0, seed=0):
        indices = range(len(weights))
        super().__init__(indices, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, self.total_size, replacement=True,
                                    generator=generator)
        return iter(indices[self.rank:self.total_size:self.num_replicas].tolist())
