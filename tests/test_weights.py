"""The trained weights in weights/: each file is what its manifest and README say it is, loads safely,
and classifies faces; an altered file is named in a warning; the demo picks the most accurate one.
CI has no FER2013, so nothing here claims an accuracy: eval.py on the real data does that."""
import json
import shutil

import pytest
import torch
from conftest import REPO, load_stage_module, run_script

from common import checkpoint as ckpt
from common.builtin_faces import make_builtin_dataset
from common.data import eval_transform
from common.runtime import count_parameters

MANIFEST = json.loads(ckpt.MANIFEST.read_text())["files"] if ckpt.MANIFEST.is_file() else []
README = (REPO / "weights" / "README.md").read_text() if ckpt.MANIFEST.is_file() else ""
slim_lib = load_stage_module("05_deploy", "slim")  # inference_only: what a shipped file keeps


def test_weights_folder_holds_exactly_the_manifest_within_the_size_budget():
    assert MANIFEST, "weights/manifest.json lists no files"
    assert sorted(p.name for p in ckpt.WEIGHTS_DIR.glob("*.pt")) == sorted(e["file"] for e in MANIFEST)
    total = sum((ckpt.WEIGHTS_DIR / entry["file"]).stat().st_size for entry in MANIFEST)
    # Six networks, two of them with 2.3M parameters, fit the course's 12 MB because each file is
    # stored as small as its test accuracy allows (float32, float16 or int8; weights/README.md).
    assert total < 12 * 1000 * 1000


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_shipped_file_matches_its_manifest_and_readme(entry):
    path = ckpt.WEIGHTS_DIR / entry["file"]
    assert ckpt.sha256(path) == entry["sha256"]
    assert entry["sha256"] in README and entry["file"] in README and f"{entry['parameters']:,}" in README
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # plain types only: safe to open
    assert set(checkpoint) <= {*slim_lib.INFERENCE_KEYS, *slim_lib.OPTIONAL_KEYS}  # no optimizer, RNG or history
    assert checkpoint["stage"] == entry["stage"] and checkpoint["class_names"] == entry["class_names"]


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_shipped_model_classifies_a_batch_of_builtin_faces(entry):
    checkpoint = ckpt.load_checkpoint(ckpt.WEIGHTS_DIR / entry["file"])
    model = load_stage_module(entry["stage"], "eval").load_model(checkpoint).eval()
    assert count_parameters(model) == entry["parameters"]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # float16 files are widened on load
    variant = "affectnet" if checkpoint["preprocessing"]["channels"] == 3 else "fer2013"
    faces = make_builtin_dataset(seed=3, variant=variant, sizes=(8, 8, 16)).splits["test"][0]
    transform = eval_transform(checkpoint["preprocessing"])
    with torch.no_grad():
        probs = model(torch.stack([transform(face) for face in faces])).softmax(dim=1)
    assert probs.shape == (16, len(entry["class_names"])) and torch.isfinite(probs).all()


def test_an_altered_shipped_file_still_loads_and_is_named_in_a_warning(tmp_path, monkeypatch, capsys):
    source = ckpt.WEIGHTS_DIR / MANIFEST[0]["file"]
    monkeypatch.setattr(ckpt, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(ckpt, "MANIFEST", tmp_path / "manifest.json")
    shutil.copy(REPO / "weights" / "manifest.json", tmp_path)
    copy = tmp_path / source.name
    shutil.copy(source, copy)
    ckpt.load_checkpoint(copy)
    assert "warning" not in capsys.readouterr().err  # unaltered: silent
    checkpoint = torch.load(copy, weights_only=True)
    checkpoint["config"]["note"] = "changed"
    torch.save(checkpoint, copy)
    assert ckpt.load_checkpoint(copy)["stage"] == MANIFEST[0]["stage"]
    err = capsys.readouterr().err
    assert f"warning: {copy.resolve()}: SHA-256 differs" in err


def test_inference_only_drops_training_state_and_half_keeps_predictions(trained_02):
    full = ckpt.load_checkpoint(trained_02)
    slim = slim_lib.inference_only(full, dtype="float16")
    assert set(slim) == set(slim_lib.INFERENCE_KEYS)
    assert all(v.dtype == torch.float16 for v in slim["model"].values() if v.is_floating_point())
    assert not any(str(v).startswith("/") for k, v in slim["config"].items() if k in ("data", "out"))
    eval_lib = load_stage_module("02_deeper", "eval")
    images = torch.randn(8, 1, 48, 48)
    with torch.no_grad():
        a = eval_lib.load_model(full).eval()(images)
        b = eval_lib.load_model(slim).eval()(images)
    assert torch.allclose(a, b, atol=0.05) and (a.argmax(1) == b.argmax(1)).all()


def test_int8_file_stores_one_byte_per_kernel_weight_and_loads_back_within_half_a_step(trained_02, tmp_path):
    full = ckpt.load_checkpoint(trained_02)
    path = tmp_path / "int8.pt"
    ckpt.save_checkpoint(path, slim_lib.inference_only(full, dtype="int8"))
    stored = torch.load(path, weights_only=True)
    kernels = [name for name, v in full["model"].items() if v.is_floating_point() and v.ndim >= 2]
    assert kernels and sorted(stored["int8_scales"]) == sorted(kernels)
    assert all(stored["model"][name].dtype == torch.int8 for name in kernels)
    assert stored["model"]["classifier.5.bias"].dtype == torch.float32  # biases are not quantized
    loaded = ckpt.load_checkpoint(path)
    assert "int8_scales" not in loaded
    for name in kernels:
        step = stored["int8_scales"][name]  # one scale per output channel, broadcast over the rest
        assert step.shape == (full["model"][name].shape[0],) + (1,) * (full["model"][name].ndim - 1)
        error = (loaded["model"][name] - full["model"][name]).abs()
        assert loaded["model"][name].dtype == torch.float32 and (error <= step / 2 + 1e-7).all()
    eval_lib = load_stage_module("02_deeper", "eval")
    images = torch.randn(8, 1, 48, 48)
    with torch.no_grad():  # the widened weights load into the model and predict like the originals
        a = eval_lib.load_model(full).eval()(images)
        b = eval_lib.load_model(loaded).eval()(images)
    assert torch.allclose(a, b, atol=0.05) and (a.argmax(1) == b.argmax(1)).all()


@pytest.fixture(scope="module")
def trained_02(small_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("run02")
    load_stage_module("02_deeper", "train").main(["--data", str(small_csv), "--epochs", "1", "--out", str(out),
                                                  "--num-workers", "0"])
    return out / "best.pt"


def test_slim_script_writes_a_small_file_and_never_replaces_one(trained_02, tmp_path):
    out = tmp_path / "shipped.pt"
    result = run_script("05_deploy/slim.py", "--checkpoint", trained_02, "--out", out, "--dtype", "float16")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size < trained_02.stat().st_size / 4 and ckpt.sha256(out) in result.stdout
    before = out.read_bytes()
    again = run_script("05_deploy/slim.py", "--checkpoint", trained_02, "--out", out)
    assert again.returncode != 0 and "already exists" in again.stderr and out.read_bytes() == before
    int8 = tmp_path / "shipped-int8.pt"
    result = run_script("05_deploy/slim.py", "--checkpoint", trained_02, "--out", int8, "--dtype", "int8")
    assert result.returncode == 0 and "| int8 |" in result.stdout
    assert int8.stat().st_size < 0.6 * out.stat().st_size  # one byte per weight against float16's two


def test_eval_on_a_shipped_file_writes_under_runs_not_weights():
    shipped = ckpt.WEIGHTS_DIR / "03_attention-fer2013.pt"
    assert ckpt.default_output_dir(shipped, "eval_test") == ckpt.RUNS_DIR / "shipped" / shipped.stem / "eval_test"
    run_file = ckpt.RUNS_DIR / "03_attention" / "x" / "best.pt"
    assert ckpt.default_output_dir(run_file, "best.onnx") == run_file.parent / "best.onnx"


def test_best_shipped_model_is_the_most_accurate_entry():
    path, entry = ckpt.best_shipped_model()
    assert entry["test_accuracy"] == max(e["test_accuracy"] for e in MANIFEST)
    assert path == ckpt.WEIGHTS_DIR / entry["file"]
