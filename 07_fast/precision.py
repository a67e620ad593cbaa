"""Stage 07's mixed precision: which dtype `torch.autocast` computes in, on which hardware.

bfloat16 keeps float32's range with fewer mantissa bits, so training in it needs no loss scaling;
float16 has a small range, so small gradients underflow to 0 unless a GradScaler multiplies the
loss first (train.py and benchmark.py make one, enabled only for float16).

    amp_dtype = pick_amp_dtype(device, args.amp)  # torch.bfloat16, torch.float16 or None
"""
import torch


def cpu_has_bf16():
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX). Without it, torch emulates
    bf16 and a bf16 step is slower than a float32 one."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def pick_amp_dtype(device, choice="auto"):
    """The dtype for torch.autocast on `device`, or None for plain float32.

    auto: bfloat16 where the hardware computes it natively (CUDA GPUs that support it, CPUs with
    bf16 instructions), float16 on older CUDA GPUs (it needs a GradScaler: its range is small),
    float32 elsewhere. An explicit bf16 or fp16 is used as asked, fast or not.
    """
    if choice == "off" or device.type not in ("cpu", "cuda"):
        return None
    if choice == "auto" and device.type == "cuda":
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "auto":
        choice = "bf16" if cpu_has_bf16() else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[choice]
