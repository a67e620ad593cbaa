"""Data-parallel plumbing for `torchrun`: joining the process group, sharing numbers between processes.

torchrun starts one copy of a training script per GPU (or per CPU share) and tells each its place
in environment variables: RANK (0 .. WORLD_SIZE-1 over all machines), WORLD_SIZE, LOCAL_RANK (its
number on this machine, which picks its GPU), MASTER_ADDR and MASTER_PORT (where rank 0 listens).
Each process trains on its own share of every batch; DistributedDataParallel averages the
gradients, so all copies take the same step and hold the same weights.

Started without torchrun, every function here does the single-process thing (rank 0 of 1).
last.pt keeps every process's random states, and --resume gives each process its own back
(restore_process_rng).
"""
import os
import signal
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from common.checkpoint import get_rng_states, set_rng_states


def silence_other_processes():
    """Processes other than rank 0 print nothing from here on (their stdout goes to /dev/null)."""
    if int(os.environ.get("RANK", 0)) > 0:
        sys.stdout = open(os.devnull, "w")


def init_distributed(device):
    """Join torchrun's process group and return (rank, world_size, this process's device).

    The backend is NCCL between GPUs and gloo between CPU processes. Processes other than rank 0
    print nothing (their stdout goes to /dev/null): one log, written by the process that also
    writes the run folder. Errors still reach stderr from every process.
    """
    if "RANK" not in os.environ:  # started as `python train.py`
        return 0, 1, device
    rank, world_size, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        sys.exit(f"error: torchrun training runs on CUDA GPUs or the CPU, not on {device.type}; use --device cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    silence_other_processes()
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
    """Add a list of numbers across all processes (e.g. loss sums and image counts of each share)."""
    if not dist.is_initialized():
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)  # sum by default
    return total.tolist()


_flag_group = None  # a gloo group: a yes/no between processes travels on the CPU, without waiting for the GPUs


def any_process(flag):
    """True on every process when `flag` is true on any one of them; `flag` itself without torchrun."""
    global _flag_group
    if not dist.is_initialized():
        return flag
    if _flag_group is None:  # made the first time; every process reaches this line at the same step
        _flag_group = dist.new_group(backend="gloo")
    vote = torch.tensor([int(flag)])
    dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=_flag_group)
    return bool(vote.item())


class SharedStop:
    """common.guard.StopSignal for processes that must stop together: a Ctrl-C or SIGTERM that reaches
    any process stops every one after the same step (a process left running would wait for the others
    forever). Without torchrun it is the StopSignal itself."""

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
        close_distributed()
        self.stop.exit_if_requested(stage, last_pt, progress)

    def close(self):
        self.stop.close()


class WeightedDistributedSampler(DistributedSampler):
    """DistributedSampler that draws indices with replacement in proportion to `weights`.

    torch's WeightedRandomSampler has no notion of processes. Here every process makes the same
    draw (same seed + epoch) and keeps every world_size-th index from its rank on, as
    DistributedSampler does with its shuffle; `set_epoch` changes the draw each epoch.
    """

    def __init__(self, weights, num_replicas=1, rank=0, seed=0):
        super().__init__(range(len(weights)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return iter(indices[self.rank:self.total_size:self.num_replicas].tolist())
