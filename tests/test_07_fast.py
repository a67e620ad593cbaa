"""07_fast: batched on-device augmentation, mixed precision, torchrun data parallelism, the benchmark."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
from conftest import LOG_LINE, REPO, load_stage_module
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from common.checkpoint import load_checkpoint, read_metrics_csv
from common.data import eval_transform
from common.facedata import PREPROCESSING

STAGE = "07_fast"
FER = PREPROCESSING["fer2013"]


def faces(n=8, channels=1, size=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


def augment_lib():
    return load_stage_module(STAGE, "augment")


def precision_lib():
    return load_stage_module(STAGE, "precision")


def test_the_network_is_03s():
    model = load_stage_module(STAGE, "model").build_model(num_classes=7)
    assert model(torch.zeros(3, 1, 48, 48)).shape == (3, 7)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 327_629
    assert f"{n_params:,}" in (REPO / STAGE / "README.md").read_text()
    code = lambda stage: (REPO / stage / "model.py").read_text().split('"""', 2)[2]  # noqa: E731 (after the docstring)
    assert code(STAGE) == code("03_attention")


@pytest.mark.parametrize("kind", ["fer2013", "affectnet"])
def test_zero_strength_is_the_eval_transform(kind):
    pre = PREPROCESSING[kind]
    images = faces(6, pre["channels"], pre["size"])
    expected = eval_transform(pre)(images)
    assert torch.allclose(augment_lib().BatchAugment(pre)(images), expected, atol=1e-5)
    # all geometric strengths 0 except a flip that never happens: the affine path is the identity too
    never_flip = augment_lib().BatchAugment(pre, flip=1e-9)
    assert torch.allclose(never_flip(images), expected, atol=1e-4)


def test_a_certain_flip_mirrors_every_image():
    images = faces()
    flipped = augment_lib().BatchAugment(FER, flip=1.0)(images)
    assert torch.allclose(flipped, eval_transform(FER)(images).flip(-1), atol=1e-4)


def test_each_image_draws_its_own_parameters():
    augment = augment_lib().build_augment(FER, "v3")
    params = augment.sample(64, torch.device("cpu"))
    for name in ("angle", "shift_x", "shift_y", "zoom", "shear", "brightness", "contrast", "erase_area"):
        assert params[name].shape == (64,) and params[name].unique().numel() == 64, name
    assert 0 < params["flip"].sum() < 64 and params["erase"].sum() < 64
    same = faces(1).repeat(16, 1, 1, 1)  # one face sixteen times
    out = augment(same)
    distinct = {tuple(row.flatten()[::97].tolist()) for row in out}
    assert len(distinct) == 16
    # and image i is changed by its own parameters only, whatever else is in the batch
    params = augment.sample(16, torch.device("cpu"))
    batch = faces(16)
    together = augment(batch, params)
    alone = augment(batch[5:6], {k: v[5:6] for k, v in params.items()})
    assert torch.allclose(together[5:6], alone, atol=1e-5)


def test_the_affine_and_lighting_match_torchvisions_formulas():
    augment = augment_lib().build_augment(FER, "v3")
    augment.erase = 0.0
    images = faces(5)
    params = augment.sample(5, torch.device("cpu"))
    params["flip"][:] = False
    out = augment(images, params)
    normalise = v2.Normalize(FER["mean"], FER["std"])
    for i in range(5):
        x = TF.affine(images[i].float() / 255, angle=-math.degrees(params["angle"][i]),  # torchvision turns clockwise
                      translate=[48 * params["shift_x"][i].item(), 48 * params["shift_y"][i].item()],
                      scale=params["zoom"][i].item(), shear=[math.degrees(params["shear"][i]), 0.0],
                      interpolation=v2.InterpolationMode.BILINEAR)
        x = TF.adjust_contrast(TF.adjust_brightness(x, params["brightness"][i].item()), params["contrast"][i].item())
        assert torch.allclose(out[i], normalise(x), atol=1e-4), i


def test_random_erasing_blanks_one_rectangle_of_2_to_33_percent():
    images = faces(32, seed=3)
    images[images == 131] = 132  # 131 is the mean gray, 0 after normalising: only erased pixels are 0 now
    augment = augment_lib().BatchAugment(FER, erase=1.0)
    out = augment(images)
    erased = out == 0
    reference = eval_transform(FER)(images)
    assert torch.allclose(out[~erased], reference[~erased], atol=1e-5)
    for mask in erased[:, 0]:
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == height * width  # one filled rectangle
        assert 0.015 * 48 * 48 <= mask.sum() <= 0.34 * 48 * 48


def test_amp_dtype_choice():
    pick_amp_dtype = precision_lib().pick_amp_dtype
    cpu_has_bf16 = precision_lib().cpu_has_bf16
    cpu = torch.device("cpu")
    assert pick_amp_dtype(cpu, "off") is None
    assert pick_amp_dtype(cpu, "bf16") == torch.bfloat16
    assert pick_amp_dtype(cpu, "auto") == (torch.bfloat16 if cpu_has_bf16() else None)
    assert pick_amp_dtype(torch.device("mps"), "auto") is None


def test_weighted_sampler_splits_one_draw_between_processes():
    weights = torch.tensor([1.0] * 90 + [9.0] * 10)  # ten rare images weigh as much as the ninety others
    ddp = load_stage_module(STAGE, "ddp")
    shares = []
    for rank in (0, 1):
        sampler = ddp.WeightedDistributedSampler(weights, num_replicas=2, rank=rank, seed=0)
        sampler.set_epoch(3)
        shares.append(list(sampler))
    assert len(shares[0]) == len(shares[1]) == 50
    together = ddp.WeightedDistributedSampler(weights, num_replicas=1, rank=0, seed=0)
    together.set_epoch(3)
    draw = list(together)
    assert draw[0::2] == shares[0] and draw[1::2] == shares[1]
    rare = sum(i >= 90 for i in draw)
    assert 30 <= rare <= 70  # about half the draws are the rare tenth
    together.set_epoch(4)
    assert list(together) != draw


@pytest.fixture(scope="module")
def trained_run(small_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("run07")
    history = load_stage_module(STAGE, "train").main(["--data", str(small_csv), "--epochs", "2", "--out", str(out)])
    return out, history


def test_short_run_learns_and_writes_the_run_folder(trained_run):
    out, history = trained_run
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    for name in ("best.pt", "last.pt", "metrics.csv", "config.json", "curves.png"):
        assert (out / name).is_file(), name
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["stage"] == STAGE and len(checkpoint["rng"]) == 1
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in checkpoint["model"])  # loads into a plain model


def test_eval_reads_the_checkpoint(trained_run, capsys):
    out, _ = trained_run
    report = load_stage_module(STAGE, "eval").main(["--checkpoint", str(out / "best.pt"), "--split", "test"])
    assert "macro-F1" in capsys.readouterr().out and 0 <= report["accuracy"] <= 1


def test_resume_continues_exactly_where_a_run_stopped(trained_run, small_csv, tmp_path, monkeypatch):
    _, straight = trained_run
    train = load_stage_module(STAGE, "train")
    calls, real_epoch = [], train.train_one_epoch

    def stopped_in_epoch_2(*args):  # as if Ctrl-C came during the second epoch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(train, "train_one_epoch", stopped_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--data", str(small_csv), "--epochs", "2", "--out", str(tmp_path)])
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    resumed = train.main(["--resume", str(tmp_path / "last.pt")])
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert resumed[-1]["val_loss"] == pytest.approx(straight[-1]["val_loss"], abs=1e-5)
    assert resumed[-1]["train_loss"] == pytest.approx(straight[-1]["train_loss"], abs=1e-5)


def test_the_bf16_autocast_path_trains(fer_csv, tmp_path, capsys):
    history = load_stage_module(STAGE, "train").main(["--data", str(fer_csv), "--epochs", "1", "--amp", "bf16",
                                                      "--out", str(tmp_path / "run")])
    assert "1 process(es), bfloat16" in capsys.readouterr().out
    assert math.isfinite(history[0]["train_loss"]) and math.isfinite(history[0]["val_loss"])
    assert load_checkpoint(tmp_path / "run" / "last.pt")["model"]["classifier.5.weight"].dtype == torch.float32  # fp32 weights


@pytest.mark.skipif(not os.environ.get("FER_SLOW_TESTS"),
                    reason="torch.compile takes minutes to compile this model on 2 CPU cores; FER_SLOW_TESTS=1 runs it")
def test_compile_trains(small_csv, tmp_path):
    history = load_stage_module(STAGE, "train").main(["--data", str(small_csv), "--epochs", "1", "--compile",
                                                      "--out", str(tmp_path)])
    assert math.isfinite(history[0]["train_loss"])
    assert not any(key.startswith("_orig_mod.") for key in load_checkpoint(tmp_path / "last.pt")["model"])


def torchrun(run, *args):
    return run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", f"{STAGE}/train.py", *args)


def test_torchrun_two_processes_train_resume_and_match_one_process(run, trained_run, small_csv, tmp_path):
    """Two gloo processes with the global batch of one (64 = 2 x 32) see the same images per step and
    average their gradients, so they land close to the single process: not exactly, since each
    process normalises its BatchNorm over its own 32 images and draws its own augmentations."""
    _, single = trained_run
    out = tmp_path / "ddp"
    first = torchrun(run, "--data", small_csv, "--epochs", "2", "--out", out)
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(run, "--resume", out / "last.pt", "--epochs", "3")  # one epoch more
    assert second.returncode == 0, second.stderr[-3000:]
    precision = "bfloat16" if precision_lib().cpu_has_bf16() else "float32"  # what --amp auto picks on this CPU
    for result in (first, second):  # one log: the second process prints nothing
        lines = [line for line in result.stdout.splitlines() if not line.startswith("note: continuing the run in")]
        assert sum(line.startswith("args:") for line in lines) == 1
        assert lines[1].startswith(f"stage {STAGE} | device cpu | 2 process(es), {precision} | 327,629 parameters")
    assert LOG_LINE.match(first.stdout.splitlines()[2]) and LOG_LINE.match(first.stdout.splitlines()[3])
    assert "note: continuing the run in" in second.stdout.splitlines()[0]
    assert second.stdout.splitlines()[3].startswith("Epoch 3/3 | ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # one run folder
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "curves.png", "last.pt", "metrics.csv"]
    rows = read_metrics_csv(out / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    checkpoint = load_checkpoint(out / "last.pt")
    assert len(checkpoint["rng"]) == 2 and not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])
    for ddp, one in zip(rows[:2], single):
        assert ddp["lr"] == pytest.approx(one["lr"])
        assert ddp["train_loss"] == pytest.approx(one["train_loss"], abs=0.08)
        assert ddp["val_loss"] == pytest.approx(one["val_loss"], abs=0.05)


def test_a_stopped_torchrun_run_is_told_to_resume_with_torchrun(monkeypatch):
    ddp = load_stage_module(STAGE, "ddp")
    assert ddp.resume_launcher() == "python"  # no process group: started as `python train.py`
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with socket.socket() as s:  # a free port for a one-process gloo group, as torchrun would set up
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert ddp.resume_launcher() == "torchrun --standalone --nproc_per_node 1"
        monkeypatch.setattr(dist, "get_world_size", lambda: 4)  # 2 machines of 2 processes
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert ddp.resume_launcher().startswith("torchrun <each machine's options")
    finally:
        dist.destroy_process_group()


def test_benchmark_prints_both_stages(run, fer_csv):
    result = run(f"{STAGE}/benchmark.py", "--data", fer_csv, "--steps", "2", "--warmup", "1", "--pipeline-batches", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "torch threads" in out and "device cpu" in out
    for stage in ("03_attention", "07_fast"):
        assert f"| {stage} |" in out
    assert "pipeline efficiency" in out and "peak RSS" in out
