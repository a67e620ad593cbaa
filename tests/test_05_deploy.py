"""05_deploy: ONNX export parity for every stage, predict on a real photograph, one preprocessing
shared by predict and eval, the webcam loop over a video file.

Needs the deploy packages and, for the photograph, scikit-image:
    pip install -r 05_deploy/requirements.txt scikit-image
Without them these tests are skipped (the course itself does not need them).
"""
import json
import re

import numpy as np
import pytest
import torch
from conftest import REPO, STAGES

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from PIL import Image  # noqa: E402

from common.builtin_faces import make_builtin_dataset  # noqa: E402
from common.checkpoint import WEIGHTS_DIR, best_shipped_model, read_manifest, save_checkpoint  # noqa: E402
from common.data import ImageDataset, eval_transform, load_data  # noqa: E402
from common.facedata import AFFECTNET_CLASSES, FER2013_CLASSES, PREPROCESSING  # noqa: E402
from common.runtime import UserError, import_sibling  # noqa: E402

DEPLOY = REPO / "05_deploy"


def deploy(module):
    return import_sibling(DEPLOY / f"{module}.py", module)


def drawn_faces(kind, n=8):
    """n built-in faces of the dataset kind, as uint8 (n, C, H, W)."""
    return make_builtin_dataset(seed=0, sizes=(n, 1, 1), variant=kind).splits["train"][0]


def make_checkpoint(stage, path):
    """A checkpoint in train.py's layout, untrained but not trivial. A fresh deep model answers
    almost the same for every input (BatchNorm's running statistics, 0 and 1, do not match its
    activations, so the signal fades layer by layer), which would make any parity check pass.
    Random BatchNorm scales and running statistics measured on drawn faces fix that, as training would."""
    kind = "affectnet" if "affectnet" in stage else "fer2013"
    classes = AFFECTNET_CLASSES if kind == "affectnet" else FER2013_CLASSES
    pre = PREPROCESSING[kind]
    torch.manual_seed(0)
    model = import_sibling(REPO / stage / "model.py", "model").build_model(len(classes), pre["channels"])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches seen
    if norms:
        model.train()
        with torch.no_grad():
            model(eval_transform(pre)(drawn_faces(kind)))
    save_checkpoint(path, {"stage": stage, "model": model.state_dict(), "class_names": list(classes),
                           "preprocessing": dict(pre), "config": {}})
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """01_baseline checkpoint and its ONNX export, shared by the predict and webcam tests."""
    folder = tmp_path_factory.mktemp("deploy01")
    checkpoint = make_checkpoint("01_baseline", folder / "best.pt")
    deploy("export").main(["--checkpoint", str(checkpoint)])  # default --out: best.onnx beside it
    return checkpoint, folder / "best.onnx"


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    """A real photograph with one face, shipped inside scikit-image (no download)."""
    data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.mark.parametrize("stage", STAGES)
def test_export_matches_pytorch_and_carries_its_metadata(stage, tmp_path, capsys):
    checkpoint = make_checkpoint(stage, tmp_path / "best.pt")
    result = deploy("export").main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "model.onnx")])
    printed = capsys.readouterr().out
    assert result["max_abs_diff"] < 1e-4
    assert f"parity: max |onnxruntime - pytorch| = {result['max_abs_diff']:.1e}" in printed and " MB)" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "model.onnx"]  # one file, no .onnx.data

    faces = deploy("faces")
    onnx_model, torch_model = faces.Classifier(tmp_path / "model.onnx"), faces.Classifier(checkpoint)
    assert (onnx_model.stage, onnx_model.class_names) == (stage, torch_model.class_names)
    assert onnx_model.preprocessing == torch_model.preprocessing
    faces_in = eval_transform(torch_model.preprocessing)(drawn_faces("affectnet" if "affectnet" in stage else "fer2013"))
    for batch_size in (1, 5):  # the batch axis is dynamic (export traced a batch of 2)
        expected = torch_model.run(faces_in[:batch_size])
        np.testing.assert_allclose(onnx_model.run(faces_in[:batch_size]), expected, atol=1e-6)
    assert np.ptp(expected, axis=0).max() > 0.005  # the answers depend on the face, so agreeing means something


def test_the_older_torchscript_exporter_also_passes_parity(tmp_path):
    checkpoint = make_checkpoint("01_baseline", tmp_path / "best.pt")
    result = deploy("export").main(["--checkpoint", str(checkpoint), "--exporter", "torchscript"])
    assert result["out"] == tmp_path / "best.onnx" and result["max_abs_diff"] < 1e-4


def test_a_failed_export_leaves_the_previous_onnx_byte_for_byte(tmp_path, monkeypatch):
    checkpoint = make_checkpoint("01_baseline", tmp_path / "best.pt")
    export = deploy("export")
    export.main(["--checkpoint", str(checkpoint), "--exporter", "torchscript"])
    before = (tmp_path / "best.onnx").read_bytes()
    monkeypatch.setattr(export, "check_parity", lambda *args: 0.5)  # onnxruntime and PyTorch disagree
    with pytest.raises(UserError, match="disagree by 5.0e-01 .* not written"):
        export.main(["--checkpoint", str(checkpoint), "--exporter", "torchscript"])
    assert (tmp_path / "best.onnx").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "best.pt"]  # no temporary file left


def test_export_refuses_a_file_that_is_not_a_course_checkpoint(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a checkpoint of this course"):
        deploy("export").main(["--checkpoint", str(tmp_path / "foreign.pt")])


def test_predict_finds_the_one_face_in_a_photograph(run, exported, astronaut, tmp_path):
    checkpoint, _ = exported
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "astronaut.png").write_bytes(astronaut.read_bytes())
    Image.new("RGB", (200, 150), (90, 140, 200)).save(photos / "sky.png")  # no face in it
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    result = run(DEPLOY / "predict.py", "--model", checkpoint, photos, "--out", tmp_path / "out")
    assert "Traceback" not in result.stderr
    assert result.returncode == 1  # one unreadable file, and the batch still finished
    assert result.stderr.strip().splitlines() == [f"error: {photos / 'broken.jpg'}: cannot be read as an image "
                                                  f"(cannot identify image file '{photos / 'broken.jpg'}')"]
    assert f"{photos / 'sky.png'}: no face found" in result.stdout
    report = json.loads((tmp_path / "out" / "predictions.json").read_text())
    by_name = {r["image"].split("/")[-1]: r for r in report["images"]}
    [face] = by_name["astronaut.png"]["faces"]
    x, y, w, h = face["box"]
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 170 and 60 < w < 160  # her face, not the helmet or flag
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert face["label"] == max(face["probabilities"], key=face["probabilities"].get)
    annotated = cv2.imread(by_name["astronaut.png"]["annotated"])
    assert annotated.shape == (512, 512, 3)
    original = cv2.cvtColor(np.asarray(Image.open(astronaut)), cv2.COLOR_RGB2BGR)
    assert np.abs(annotated.astype(int) - original).mean() > 1  # something was drawn on it
    assert by_name["sky.png"]["faces"] == [] and "error" in by_name["broken.jpg"]
    csv_lines = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert csv_lines[0].startswith("image,face,x,y,w,h,label,probability,angry") and len(csv_lines) == 2


def test_predict_gives_the_same_probabilities_from_checkpoint_and_onnx(exported, astronaut, tmp_path):
    checkpoint, onnx_file = exported
    crop = np.asarray(Image.open(astronaut))[60:180, 160:290]  # her face, cropped by hand
    Image.fromarray(crop).save(tmp_path / "face.png")
    predict = deploy("predict")
    rows = {}
    for model in (checkpoint, onnx_file):
        rows[model.suffix], problems = predict.main(["--model", str(model), "--no-detect", str(tmp_path / "face.png"),
                                                     "--out", str(tmp_path / model.suffix[1:])])
        assert problems == 0
    [pt_face], [onnx_face] = rows[".pt"][0]["faces"], rows[".onnx"][0]["faces"]
    assert pt_face["box"] == [0, 0, crop.shape[1], crop.shape[0]]  # --no-detect: the whole image is the face
    for name in FER2013_CLASSES:
        assert onnx_face["probabilities"][name] == pytest.approx(pt_face["probabilities"][name], abs=1e-5)


def test_predict_with_a_missing_model_says_so_in_one_line(run, astronaut, tmp_path):
    result = run(DEPLOY / "predict.py", "--model", tmp_path / "missing.pt", astronaut, "--out", tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.pt'}: model not found; "
                                                  "pass a run's best.pt or a .onnx from 05_deploy/export.py"]


def test_predict_without_model_uses_the_most_accurate_shipped_file_and_says_which(run, astronaut, tmp_path):
    fer2013 = [e for e in read_manifest() if e["class_names"] == FER2013_CLASSES]
    if not fer2013:
        pytest.skip("no shipped FER2013 weights in weights/")
    path = WEIGHTS_DIR / max(fer2013, key=lambda e: e["test_accuracy"])["file"]
    assert best_shipped_model(FER2013_CLASSES)[0] == path  # 04's AffectNet file: another test set
    result = run(DEPLOY / "predict.py", astronaut, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"model: weights/{path.name} (the most accurate shipped model")
    report = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert report["model"] == str(path) and len(report["images"][0]["faces"]) == 1


def test_export_takes_a_shipped_file_and_writes_outside_weights(tmp_path):
    path, entry = best_shipped_model()
    if path is None:
        pytest.skip("no shipped weights in weights/")
    out = tmp_path / "shipped.onnx"
    deploy("export").main(["--checkpoint", str(path), "--out", str(out)])  # parity is checked inside
    classifier = deploy("faces").Classifier(out)
    assert classifier.stage == entry["stage"] and classifier.class_names == entry["class_names"]


@pytest.mark.parametrize("kind", ["fer2013", "affectnet"])
def test_predict_and_eval_prepare_a_face_identically(kind, exported, tmp_path):
    """A colour photo of a face through predict's path (file -> RGB -> preprocess) and through the
    training/eval path (image-folder reader -> ImageDataset with eval_transform): the same tensor."""
    pre = PREPROCESSING[kind]
    rng = np.random.default_rng(0)
    photo = (rng.integers(0, 256, (13, 11, 3)).repeat(9, axis=0).repeat(9, axis=1)).astype(np.uint8)  # 117x99
    # a one-image tree in each dataset's layout, read as train.py and eval.py read data
    folder = tmp_path / ("fer2013/train/happy" if kind == "fer2013" else "affectnet/Train/anger")
    folder.mkdir(parents=True)
    Image.fromarray(photo).save(folder / "Training_0.png")
    if kind == "affectnet":  # the AffectNet reader wants a val split it can fill
        (folder.parents[1] / "Val/anger").mkdir(parents=True)
        Image.fromarray(photo).save(folder.parents[1] / "Val/anger/Training_0.png")
    data = load_data(folder.parents[1], use_cache=False, val_fraction=0.0)
    assert data.preprocessing == pre
    images, labels = data.split("train")
    from_eval = ImageDataset(images, labels, eval_transform(data.preprocessing))[0][0]
    faces, predict = deploy("faces"), deploy("predict")
    from_predict = faces.preprocess_face(predict.read_photo(folder / "Training_0.png"), pre)
    assert from_predict.shape == (pre["channels"], pre["size"], pre["size"])
    assert torch.equal(from_predict, from_eval)
    bgr = faces.preprocess_face(photo[..., ::-1].copy(), pre)  # the classic demo bug: OpenCV's BGR order
    assert not torch.equal(bgr, from_eval)


def test_predict_and_webcam_share_the_detector_flags_with_their_own_smallest_face():
    predict = deploy("predict").get_args(["photo.jpg"])
    webcam = deploy("webcam").get_args([])
    for args in (predict, webcam):
        assert (args.margin, args.min_neighbors) == (0.1, 5)
    assert (predict.min_face, webcam.min_face) == (0.05, 0.15)  # a webcam face fills more of it
    with pytest.raises(SystemExit):  # checked by the shared flag type in both tools
        deploy("webcam").get_args(["--margin", "-0.1"])


def test_tracks_smooth_each_face_and_follow_it_as_it_moves():
    tracks = deploy("webcam").FaceTracks(alpha=0.3)
    happy, sad = np.eye(7)[3], np.eye(7)[4]
    for step in range(5):  # a face drifting right, seen as happy
        [(first_id, _, smoothed)] = tracks.update([(100 + 4 * step, 50, 80, 80)], [happy])
    [(same_id, _, smoothed)] = tracks.update([(120, 50, 80, 80)], [sad])  # one frame says sad
    assert same_id == first_id and smoothed.argmax() == 3  # still happy: one frame moves it by 0.3
    assert smoothed[4] == pytest.approx(0.3)
    results = tracks.update([(122, 50, 80, 80), (400, 300, 60, 60)], [sad, sad])  # a second person arrives
    assert results[0][0] == first_id and results[1][0] != first_id
    assert results[1][2].argmax() == 4  # a new face starts from its own first prediction


def test_webcam_loop_over_a_video_writes_every_frame(run, exported, astronaut, tmp_path):
    _, onnx_file = exported
    photo = cv2.resize(cv2.imread(str(astronaut)), (320, 320))
    writer = cv2.VideoWriter(str(tmp_path / "in.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 320))
    for i in range(12):
        writer.write(np.roll(photo, 2 * i, axis=1))  # the face moves a little each frame
    writer.release()
    result = run(DEPLOY / "webcam.py", "--model", onnx_file, "--video", tmp_path / "in.mp4",
                 "--output", tmp_path / "out.mp4", "--no-window")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("done | 12 frames in ")
    video, frames = cv2.VideoCapture(str(tmp_path / "out.mp4")), []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 12 and frames[0].shape == (320, 320, 3)
    assert np.abs(frames[-1].astype(int) - np.roll(photo, 22, axis=1)).mean() > 1  # boxes and fps drawn


@pytest.mark.skipif(not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()),
                    reason="this OpenCV can open windows")
def test_webcam_asking_for_a_window_on_headless_opencv_names_the_package(exported):
    checkpoint, _ = exported
    with pytest.raises(UserError, match=r"pip install 'opencv-python<5'"):
        deploy("webcam").main(["--model", str(checkpoint), "--video", "unused.mp4"])


def test_webcam_with_a_bad_video_says_which_file(exported, tmp_path):
    checkpoint, _ = exported
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    webcam = deploy("webcam")
    with pytest.raises(UserError, match=r"clip\.mp4: (cannot be opened as a video|gave no frames)"):
        webcam.main(["--model", str(checkpoint), "--video", str(tmp_path / "clip.mp4"), "--no-window"])
    with pytest.raises(UserError, match=r"missing\.mp4: no such video file"):
        webcam.main(["--model", str(checkpoint), "--video", str(tmp_path / "missing.mp4"), "--no-window"])
