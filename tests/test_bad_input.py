"""Bad input, as a careful or a careless user gives it, against every script: each case runs as its own
process and must exit with the expected status and one line that names the file or flag, without a
traceback, and must leave the user's run folder and .onnx file byte for byte as they were.

Importing torch costs seconds per process, so the cases are forked from one small server process that
imported it once (where the platform can fork); each is still a separate process running the script
as `python <script> <args>` would.
"""
import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO

from common.builtin_faces import make_builtin_dataset, write_fer2013_csv, write_image_folders

HAVE_ONNX = all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxruntime"))
SERVER = textwrap.dedent(r'''
    import atexit, errno, json, os, runpy, sys, traceback
    import numpy, PIL.Image, torch, torchvision, tqdm  # imported once; every case runs in a fork of this process
    import torchvision.transforms.v2
    sys.path.insert(0, os.getcwd())
    import common.data, common.guard, common.plots, common.metrics, analysis.calibration, analysis.heatmaps  # ours, too
    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.chdir(case["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            if case["full_disk"]:  # the disk fills up: every fsync of a save fails as it would
                def full(fd):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync = full
            sys.argv = [case["script"], *case["args"]]
            code = 0
            try:
                runpy.run_path(case["script"], run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) or e.code is None else 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 0)
        _, status = os.waitpid(pid, 0)
        print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
''')


class Runner:
    """Runs `python <script> <args>` from the repo root: forked from the server, or as a plain subprocess."""

    def __init__(self, tmp):
        self.tmp, self.count = tmp, 0
        self.server = None
        if hasattr(os, "fork"):
            self.server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True, cwd=REPO)

    def __call__(self, script, *args, full_disk=False):
        args = [str(a) for a in args]
        if self.server is None:
            assert not full_disk, "full-disk cases need os.fork"
            result = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True)
            return result.returncode, result.stdout, result.stderr
        self.count += 1
        files = {name: str(self.tmp / f"case{self.count}.{name}") for name in ("stdout", "stderr")}
        case = {"script": script, "args": args, "cwd": str(REPO), "full_disk": full_disk, **files}
        self.server.stdin.write(json.dumps(case) + "\n")
        self.server.stdin.flush()
        code = json.loads(self.server.stdout.readline())
        return code, open(files["stdout"]).read(), open(files["stderr"]).read()

    def close(self):
        if self.server:
            self.server.stdin.close()
            self.server.wait(timeout=60)


def checksums(*paths):
    """{file: sha256} for every file under the given folders and files (lock and temporary files included)."""
    found = {}
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A user's finished run (and its .onnx when the deploy packages are there) plus the bad files."""
    tmp = tmp_path_factory.mktemp("bad-input")
    runner = Runner(tmp)
    csv = tmp / "fer2013.csv"
    write_fer2013_csv(make_builtin_dataset(seed=0, sizes=(32, 14, 14)), csv)
    run = tmp / "my_run"
    code, _, err = runner("01_baseline/train.py", "--data", csv, "--epochs", "1", "--batch-size", "16", "--out", run)
    assert code == 0, err
    onnx = tmp / "my_model.onnx"
    if HAVE_ONNX:
        code, _, err = runner("05_deploy/export.py", "--checkpoint", run / "best.pt", "--out", onnx,
                              "--exporter", "torchscript")
        assert code == 0, err
    bad = tmp / "bad"
    bad.mkdir()
    best = torch.load(run / "best.pt", weights_only=True)
    torch.save(best["model"], bad / "weights.pt")  # a bare state_dict
    (bad / "bare").mkdir()
    torch.save(best["model"], bad / "bare" / "last.pt")
    nan = {**best, "model": {k: v.clone() for k, v in best["model"].items()}}
    next(v for v in nan["model"].values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(nan, bad / "nan.pt")
    (bad / "other_classes").mkdir()
    torch.save({**best, "class_names": ["calm", "cross"]}, bad / "other_classes" / "last.pt")
    (bad / "junk").mkdir()
    (bad / "junk" / "last.pt").write_text("not a checkpoint")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (bad / "evil").mkdir()
    torch.save({"model": Evil()}, bad / "evil" / "last.pt")
    (bad / "a_file").write_text("x")
    (bad / "empty.csv").write_text("")
    (bad / "no_pixels.csv").write_text("emotion,Usage\n0,Training\n")
    (bad / "bad_label.csv").write_text("emotion,pixels,Usage\n9," + " ".join(["0"] * 2304) + ",Training\n")
    tree = bad / "fer_tree"
    write_image_folders(make_builtin_dataset(seed=1, sizes=(14, 7, 7)), tree)
    (tree / "train" / "contempt").mkdir()
    busy = bad / "busy_run"
    busy.mkdir()
    other_run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (busy / ".lock").write_text(f"{other_run.pid}\n")
    yield {"run": run, "onnx": onnx, "csv": csv, "bad": bad, "tmp": tmp, "runner": runner}
    other_run.kill()
    runner.close()


T = "01_baseline/train.py"
E = "01_baseline/eval.py"
X = "05_deploy/export.py"
P = "05_deploy/predict.py"
W = "05_deploy/webcam.py"
# (name, script, arguments (formatted with the world's paths), exit status, what the one line must contain:
# the parts between " ... " in that order)
CASES = [
    ("batch size 0", T, "--batch-size 0", 2, "argument --batch-size: 0: must be a whole number of at least 1"),
    ("batch size negative", T, "--batch-size -3", 2, "argument --batch-size: -3"),
    ("batch size not a number", T, "--batch-size abc", 2, "argument --batch-size: 'abc' is not an integer"),
    ("lr negative", T, "--lr -1", 2, "argument --lr: -1: must be a finite number above 0"),
    ("lr zero", T, "--lr 0", 2, "argument --lr: 0: must be a finite number above 0"),
    ("lr nan", T, "--lr nan", 2, "argument --lr: nan: must be a finite number above 0"),
    ("lr inf", T, "--lr inf", 2, "argument --lr: inf: must be a finite number above 0"),
    ("epochs 0", T, "--epochs 0", 2, "argument --epochs: 0: must be a whole number of at least 1"),
    ("num workers negative", T, "--num-workers -1", 2, "argument --num-workers: -1: must be 0 or more"),
    ("patience 0", T, "--patience 0", 2, "argument --patience: 0"),
    ("02 batch size 0", "02_deeper/train.py", "--batch-size 0", 2, "argument --batch-size: 0"),
    ("04 image size 0", "04_affectnet/train.py", "--image-size 0", 2, "argument --image-size: 0"),
    ("07 batch size 0", "07_fast/train.py", "--batch-size 0", 2, "argument --batch-size: 0"),
    ("07 out holds a run", "07_fast/train.py", "--data {csv} --out {run}", 1, "{run}: already holds a run"),
    ("07 resume best.pt", "07_fast/train.py", "--resume {run}/best.pt", 1, "--resume continues a run from its last.pt"),
    ("07 diverging lr", "07_fast/train.py", "--data {csv} --lr 1e9 --batch-size 8 --out {tmp}/diverged07", 1,
     "the loss is ... at epoch 1 step ... training diverged"),
    ("out is a file", T, "--out {bad}/a_file", 2, "argument --out: {bad}/a_file is a file"),
    ("out under a file", T, "--out {bad}/a_file/run", 2, "argument --out: {bad}/a_file/run lies under {bad}/a_file"),
    ("out holds a run", T, "--data {csv} --out {run}", 1, "{run}: already holds a run"),
    ("out in use by a live run", T, "--data {csv} --out {bad}/busy_run", 1, "{bad}/busy_run: in use by another training run (PID"),
    ("resume best.pt", T, "--resume {run}/best.pt", 1, "{run}/best.pt: --resume continues a run from its last.pt"),
    ("resume another stage", "02_deeper/train.py", "--resume {run}/last.pt", 1,
     "is a checkpoint of 01_baseline, not 02_deeper; continue it with python 01_baseline/train.py"),
    ("resume bare state_dict", T, "--resume {bad}/bare/last.pt", 1, "{bad}/bare/last.pt: holds bare model weights (a state_dict)"),
    ("resume other classes", T, "--resume {bad}/other_classes/last.pt --epochs 2", 1, "was trained on the classes ['calm', 'cross']"),
    ("resume junk file", T, "--resume {bad}/junk/last.pt", 1, "{bad}/junk/last.pt: not a readable checkpoint"),
    ("resume refused pickle", T, "--resume {bad}/evil/last.pt", 1, "{bad}/evil/last.pt: refused: loading it would import posix.system"),
    ("resume missing", T, "--resume {bad}/gone/last.pt", 1, "{bad}/gone/last.pt: checkpoint not found"),
    ("resume with no epochs left", T, "--resume {run}/last.pt --epochs 1", 1, "--epochs 1: {run}/last.pt has already trained 1 epochs"),
    ("diverging lr", T, "--data {csv} --lr 1e9 --batch-size 8 --out {tmp}/diverged", 1,
     "the loss is nan at epoch 1 step 2: training diverged"),
    ("full disk while training", T, "--data {csv} --out {tmp}/full", 1, "config.json: could not be written: no space left on device"),
    ("data missing", T, "--data {bad}/missing.csv", 1, "{bad}/missing.csv: no such file or folder"),
    ("data empty csv", T, "--data {bad}/empty.csv", 1, "{bad}/empty.csv: file is empty"),
    ("data csv without pixels", T, "--data {bad}/no_pixels.csv", 1, "{bad}/no_pixels.csv: missing column 'pixels'"),
    ("data csv bad label", T, "--data {bad}/bad_label.csv", 1, "{bad}/bad_label.csv: line 2: unknown label '9'"),
    ("data fer tree with contempt", T, "--data {bad}/fer_tree", 1,
     "{bad}/fer_tree/train/contempt: class folder 'contempt' does not belong in this FER2013 tree"),
    ("eval bare state_dict", E, "--checkpoint {bad}/weights.pt", 1, "{bad}/weights.pt: holds bare model weights"),
    ("eval NaN weights", E, "--checkpoint {bad}/nan.pt", 1, "{bad}/nan.pt: ... weights are NaN or infinite (the run that saved it diverged)"),
    ("eval another stage", "02_deeper/eval.py", "--checkpoint {run}/best.pt", 1,
     "{run}/best.pt: was trained by stage 01_baseline; use python 01_baseline/eval.py"),
    ("eval refused pickle", E, "--checkpoint {bad}/evil/last.pt", 1, "refused: loading it would import posix.system"),
    ("eval batch size 0", E, "--checkpoint {run}/best.pt --batch-size 0", 2, "argument --batch-size: 0"),
    ("eval out is a file", E, "--checkpoint {run}/best.pt --out {bad}/a_file", 2, "argument --out: {bad}/a_file is a file"),
    ("eval full disk", E, "--checkpoint {run}/best.pt --out {tmp}/eval_full", 1, "confusion.png: could not be written: no space left"),
    ("export NaN weights", X, "--checkpoint {bad}/nan.pt --out {onnx}", 1, "{bad}/nan.pt: ... weights are NaN or infinite (the run that saved it diverged)"),
    ("export bare state_dict", X, "--checkpoint {bad}/weights.pt --out {onnx}", 1, "{bad}/weights.pt: holds bare model weights"),
    ("export check batch 0", X, "--checkpoint {run}/best.pt --check-batch 0", 2, "argument --check-batch: 0"),
    ("export out is a folder", X, "--checkpoint {run}/best.pt --out {bad}", 2, "argument --out: {bad} is a folder"),
    ("export out under a file", X, "--checkpoint {run}/best.pt --out {bad}/a_file/m.onnx", 2, "lies under {bad}/a_file"),
    ("export full disk", X, "--checkpoint {run}/best.pt --out {onnx} --exporter torchscript", 1,
     "{onnx}: could not be written: no space left on device"),
    ("predict margin negative", P, "--model {run}/best.pt x.jpg --margin -0.1", 2, "argument --margin: -0.1: must be a finite number of 0 or more"),
    ("predict min face 0", P, "--model {run}/best.pt x.jpg --min-face 0", 2, "argument --min-face: 0"),
    ("predict out is a file", P, "--model {run}/best.pt x.jpg --out {bad}/a_file", 2, "argument --out: {bad}/a_file is a file"),
    ("predict NaN weights", P, "--model {bad}/nan.pt x.jpg", 1, "{bad}/nan.pt: ... weights are NaN or infinite (the run that saved it diverged)"),
    ("predict bare state_dict", P, "--model {bad}/weights.pt x.jpg", 1, "{bad}/weights.pt: holds bare model weights"),
    ("webcam max frames negative", W, "--model {run}/best.pt --max-frames -1", 2, "argument --max-frames: -1"),
    ("webcam camera negative", W, "--model {run}/best.pt --camera -2", 2, "argument --camera: -2"),
    ("webcam NaN weights", W, "--model {bad}/nan.pt --no-window", 1, "{bad}/nan.pt: ... weights are NaN or infinite (the run that saved it diverged)"),
    ("explore per class 0", "analysis/explore.py", "--per-class 0", 2, "argument --per-class: 0"),
    ("explore out is a file", "analysis/explore.py", "--out {bad}/a_file", 2, "argument --out: {bad}/a_file is a file"),
]


def the_message(stderr):
    """stderr without argparse's usage block (first line "usage:", the rest indented)."""
    lines = stderr.strip().splitlines()
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if not line.startswith(("usage:", " "))]
    return lines


@pytest.mark.parametrize("name,script,args,status,expected", CASES, ids=[case[0] for case in CASES])
def test_bad_input(world, name, script, args, status, expected):
    if script == X and not HAVE_ONNX:
        pytest.skip("export needs the deploy packages (05_deploy/requirements.txt)")
    paths = {key: world[key] for key in ("run", "onnx", "csv", "bad", "tmp")}
    before = checksums(world["run"], *([world["onnx"]] if HAVE_ONNX else []))
    code, _, stderr = world["runner"](script, *args.format(**paths).split(), full_disk="full disk" in name)
    assert "Traceback" not in stderr, stderr
    lines = the_message(stderr)
    assert len(lines) == 1, stderr
    parts = expected.format(**paths).split(" ... ")
    assert all(part in lines[0] for part in parts), lines[0]
    assert "weights_only=False" not in lines[0]
    assert code == status, stderr
    assert checksums(world["run"], *([world["onnx"]] if HAVE_ONNX else [])) == before  # nothing the user had changed
    if name == "diverging lr":  # stopped before any save: no checkpoint holds the NaN weights
        assert not list((world["tmp"] / "diverged").glob("*.pt"))


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 40 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root can write anywhere")
def test_read_only_out_folder_is_one_line(world, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    code, _, stderr = world["runner"](T, "--out", locked / "run")
    assert code == 2 and the_message(stderr) == [f"train.py: error: argument --out: {locked} is read-only for you; "
                                                  f"choose a folder you can write to"]


def test_errno_of_the_injected_full_disk_is_enospc():
    """The full-disk cases above fail fsync with ENOSPC: what a full disk gives on Linux and macOS."""
    assert os.strerror(errno.ENOSPC).lower() == "no space left on device"
