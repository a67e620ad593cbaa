r"""Live expressions from a webcam or a video file: face boxes, smoothed labels, frames per second.

    python 05_deploy/webcam.py --model runs/01_baseline/<run>/best.onnx  # camera 0, in a window
    python 05_deploy/webcam.py --model best.onnx --camera 1 --output session.mp4  # and record it
    python 05_deploy/webcam.py --model best.pt --video clip.mp4 --output out.mp4 \
        --no-window  # headless

Press q or Esc in the window to stop (Ctrl+C in the terminal works too; the recording is kept).
A single frame's prediction jumps around (a blink, a shadow), so each face keeps an exponential
moving average of its probabilities across frames; faces are followed from frame to frame by
how much their boxes overlap. The window needs OpenCV with GUI support: the opencv-python wheel,
not opencv-python-headless.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import argparse
import time

import numpy as np

from common.guard import non_negative_int, output_file
from common.runtime import UserError, import_sibling

faces = import_sibling(__file__, "faces")
TITLE = "05_deploy webcam (q or Esc to quit)"
NO_WINDOW = ("this OpenCV build cannot open windows (opencv-python-headless has none); "
             "for a window: "
             "pip uninstall opencv-python-headless && pip install 'opencv-python<5'; "
             "or run headless with --no-window --output out.mp4")


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="a run's best.pt (any stage) or a .onnx from export.py "
                                        "(default: the most accurate file in weights/)")
    parser.add_argument(
        "--camera",
        type=non_negative_int,
        default=0,
        help="camera index (0 is the built-in one)",
    )
    parser.add_argument("--video", help="read this video file instead of a camera")
    parser.add_argument(
        "--output",
        type=output_file,
        help="also write the annotated frames to this video (.mp4 or .avi)",
    )
    parser.add_argument(
        "--no-window",
        action="store_true",
        help="show nothing (for servers; use with --output)",
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        default=0.3,
        help="weight of the newest frame in each face's moving average (1 = no smoothing)",
    )
    parser.add_argument(
        "--max-frames",
        type=non_negative_int,
        default=0,
        help="stop after this many frames (0: until the end)",
    )
    faces.add_detector_flags(parser, min_face=0.15, picture="frame")  # webcam faces are big
    return parser.parse_args(argv)


def overlap(a, b):
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


class FaceTracks:
    """Each face's moving average of probabilities, carried from frame to frame.

    A face in the new frame continues the track whose last box it overlaps most (IoU at least
    `min_iou`); otherwise it starts a new track. A track survives `max_missed` frames without a
    detection, so one missed frame does not reset its average.
    """

    def __init__(self, alpha=0.3, min_iou=0.3, max_missed=5):
        self.alpha, self.min_iou, self.max_missed = alpha, min_iou, max_missed
        self.tracks, self.next_id = {}, 0  # id -> {"box", "probs", "missed"}

    def update(self, boxes, probs):
        """New boxes and their probabilities -> [(track id, box, smoothed probabilities)]."""
        pairs = sorted(((overlap(box, t["box"]), i, tid) for i, box in enumerate(boxes)
                        for tid, t in self.tracks.items()), reverse=True)
        matched, taken = {}, set()
        for iou, i, tid in pairs:  # greedy: the best-overlapping pairs first
            if iou >= self.min_iou and i not in matched and tid not in taken:
                matched[i] = tid
                taken.add(tid)
        results = []
        for i, (box, p) in enumerate(zip(boxes, probs)):
            if i in matched:
                track = self.tracks[matched[i]]
                track["probs"] = self.alpha * p + (1 - self.alpha) * track["probs"]
                track.update(box=box, missed=0)
                tid = matched[i]
            else:
                tid, self.next_id = self.next_id, self.next_id + 1
                self.tracks[tid] = {
                    "box": box,
                    "probs": np.asarray(p, dtype=np.float64),
                    "missed": 0,
                }
            results.append((tid, box, self.tracks[tid]["probs"]))
        seen = {tid for tid, _, _ in results}
        for tid in [t for t in self.tracks if t not in seen]:
            self.tracks[tid]["missed"] += 1
            if self.tracks[tid]["missed"] > self.max_missed:
                del self.tracks[tid]
        return results


def open_source(cv2, args):
    if args.video:
        if not Path(args.video).is_file():
            raise UserError(f"{args.video}: no such video file")
        capture = cv2.VideoCapture(args.video)
        if not capture.isOpened():
            raise UserError(f"{args.video}: cannot be opened as a video "
                            f"(is it a video file OpenCV's FFmpeg reads?)")
    else:
        capture = cv2.VideoCapture(args.camera)
        if not capture.isOpened():
            raise UserError(f"camera {args.camera} cannot be opened: "
                            f"is it connected and not used by another program? "
                            f"Try another --camera index, or --video FILE")
    return capture


def open_writer(cv2, path, fps, frame):
    # both built into OpenCV's wheels
    codec = "MJPG" if Path(path).suffix.lower() == ".avi" else "mp4v"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(
        str(path),
        cv2.VideoWriter_fourcc(*codec),
        fps,
        (frame.shape[1], frame.shape[0]),
    )
    if not writer.isOpened():
        raise UserError(f"{path}: cannot write a video here; "
                        f"use a .mp4 or .avi name in a writable folder")
    return writer


def main(argv=None):
    args = get_args(argv)
    if not 0 < args.smoothing <= 1:
        raise UserError(f"--smoothing {args.smoothing}: must be in (0, 1]; 1 turns smoothing off")
    args.model = faces.choose_model(args.model)
    classifier = faces.Classifier(args.model)
    cv2 = faces.require("cv2", "opencv-python-headless<5")
    detector = faces.FaceDetector(min_neighbors=args.min_neighbors, min_fraction=args.min_face)
    if not args.no_window:
        try:
            cv2.namedWindow(TITLE)
        except cv2.error:
            raise UserError(NO_WINDOW) from None
    elif not args.output:
        print("note: --no-window without --output: "
              "frames are processed but neither shown nor saved")
    capture = open_source(cv2, args)
    source_fps = capture.get(cv2.CAP_PROP_FPS)
    source_fps = source_fps if 1 <= source_fps <= 240 else 30.0  # cameras often report 0
    tracks = FaceTracks(args.smoothing)
    writer, frames, fps = None, 0, 0.0
    started = time.perf_counter()
    try:
        while not args.max_frames or frames < args.max_frames:
            tick = time.perf_counter()
            ok, frame = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            boxes = detector(rgb)
            probs = classifier.probabilities(
                [faces.crop_face(rgb, box, args.margin)[0] for box in boxes]
            )
            for _, box, smoothed in tracks.update(boxes, probs):
                faces.draw_face(cv2, frame, box, classifier.class_names, smoothed)
            seconds = time.perf_counter() - tick
            # smoothed too, so it reads
            fps = 1 / seconds if frames == 0 else 0.9 * fps + 0.1 / seconds
            cv2.putText(
                frame,
                f"{fps:.1f} fps",
                (8, 24),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.7,
                (0, 255, 255),
                2,
                cv2.LINE_AA,
            )
            if args.output:
                writer = writer or open_writer(cv2, args.output, source_fps, frame)
                writer.write(frame)
            frames += 1
            if not args.no_window:
                cv2.imshow(TITLE, frame)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    except KeyboardInterrupt:
        pass  # Ctrl+C ends the loop; the recording below is still closed properly
    finally:
        capture.release()
        if writer:
            writer.release()
        if not args.no_window:
            cv2.destroyAllWindows()
    if frames == 0:
        raise UserError(f"{args.video or f'camera {args.camera}'}: gave no frames; "
                        f"is it a video OpenCV can decode?")
    total = time.perf_counter() - started
    saved = f" | wrote {args.output}" if args.output else ""
    print(f"done | {frames} frames in {total:.1f}s, {frames / total:.1f} fps | "
          f"{classifier.backend}{saved}")
    return frames


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
