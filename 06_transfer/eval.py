"""Evaluate a checkpoint of this stage: accuracy, macro-F1, per-class table, confusion matrix.

    python 06_transfer/eval.py --checkpoint runs/06_transfer/<run>/best.pt   # PrivateTest
    python 06_transfer/eval.py --checkpoint runs/06_transfer/<run>/best.pt --split val
    python 06_transfer/eval.py --checkpoint runs/06_transfer/<run>/best.pt --gradcam

Writes report.json, predictions.csv (one row per image), confusion.png (counts),
confusion_normalized.png, mistakes.png (the most confident mistakes), reliability.png
(calibration), with --gradcam gradcam.png. A checkpoint started from AffectNet and one trained
from scratch are evaluated alike: the checkpoint names its network (model_kwargs), and eval
rebuilds it.

`evaluate()` is also what train.py calls every epoch, so validation during training and the
final test are the same code. This file is identical in every stage except this docstring.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from analysis.calibration import write_eval_figures
from analysis.heatmaps import write_attention, write_gradcam
from analysis.tencrop import evaluate_tencrop
from common.checkpoint import (default_output_dir, load_checkpoint, require_course_keys,
                               write_json, write_metrics_csv)
from common.data import (ImageDataset, eval_transform, find_default_affectnet, find_default_data,
                         load_data)
from common.guard import output_dir, positive_int
from common.metrics import (classification_report, format_confusion, format_report,
                            prediction_rows)
from common.plots import plot_confusion
from common.runtime import UserError, import_sibling, pick_device

STAGE = Path(__file__).resolve().parent.name


@torch.no_grad()
def evaluate(model, loader, device):
    """Mean cross-entropy, accuracy, macro-F1 and the raw predictions over a loader."""
    model.eval()  # dropout off, BatchNorm uses its running statistics
    total_loss = 0.0
    all_labels = []
    all_probs = []
    for images, labels in loader:
        images = images.to(device)
        labels = labels.to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        all_labels.append(labels.cpu())
        all_probs.append(logits.softmax(dim=1).cpu())
    labels = torch.cat(all_labels)
    probs = torch.cat(all_probs)
    preds = probs.argmax(dim=1)
    report = classification_report(labels, preds, list(range(probs.shape[1])))
    return {
        "loss": total_loss / len(labels),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "labels": labels,
        "preds": preds,
        "probs": probs,
    }


def load_model(checkpoint):
    """Rebuild this stage's model from a checkpoint (on the CPU; move it afterwards)."""
    model_lib = import_sibling(__file__, "model")
    num_classes = len(checkpoint["class_names"])
    channels = checkpoint["preprocessing"]["channels"]
    model = model_lib.build_model(num_classes, channels, **checkpoint.get("model_kwargs", {}))
    model.load_state_dict(checkpoint["model"])
    return model


def find_data(config, class_names):
    """The data the run trained on, or this clone's copy in data/ (a shipped or copied
    checkpoint names a path of the machine that trained it)."""
    path = config["data"]
    if Path(path).exists() or path.startswith("builtin"):
        return path
    if "contempt" in class_names and config.get("labels") != "ferplus":
        found = find_default_affectnet()
    else:
        found = find_default_data()
    return str(found) if found else path


def get_args(argv=None):
    defaults = argparse.ArgumentDefaultsHelpFormatter  # --help shows every flag's default
    parser = argparse.ArgumentParser(description=f"Evaluate a {STAGE} checkpoint.",
                                     formatter_class=defaults)
    parser.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    parser.add_argument("--data", help="data to evaluate on (default: the run's data)")
    parser.add_argument("--split", choices=["test", "val", "train"], default="test",
                        help="test = PrivateTest: report it once, after choosing on val")
    parser.add_argument("--out", type=output_dir,
                        help="folder for the report (default: <run folder>/eval_<split>, "
                             "runs/shipped/<name>/eval_<split> for a file in weights/)")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--tta", choices=["none", "tencrop"], default="none",
                        help="tencrop: also average over ten shifted and mirrored crops")
    parser.add_argument("--gradcam", action="store_true",
                        help="also write gradcam.png: where the model looked")
    parser.add_argument("--attention", action="store_true",
                        help="also write attention.png: 03_attention's attention maps")
    return parser.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)  # refuses bare weights, code pickles, NaN
    require_course_keys(checkpoint, args.checkpoint)
    if checkpoint["stage"] != STAGE:
        raise UserError(f"{args.checkpoint}: was trained by stage {checkpoint['stage']}; "
                        f"use python {checkpoint['stage']}/eval.py")
    device = pick_device(args.device)
    model = load_model(checkpoint).to(device)
    if args.attention and not hasattr(model, "attention_maps"):
        raise UserError(f"{STAGE}: this stage's model has no attention maps; "
                        f"use 03_attention (or --gradcam)")
    config = checkpoint["config"]  # read the data the way the run did (FER+ labels included)
    class_names = checkpoint["class_names"]
    data = load_data(
        args.data or find_data(config, class_names),
        seed=config["seed"],
        labels=config.get("labels", "fer2013"),
        ferplus=config.get("ferplus"),
        ferplus_mode=config.get("ferplus_mode", "majority"),
    )
    if data.class_names != class_names:
        raise UserError(f"{data.source}: classes {data.class_names} differ from the "
                        f"checkpoint's {class_names}")
    images, labels = data.split(args.split)
    preprocessing = checkpoint["preprocessing"]
    dataset = ImageDataset(images, labels, eval_transform(preprocessing))
    loader = DataLoader(dataset, batch_size=args.batch_size)
    result = evaluate(model, loader, device)
    report = classification_report(result["labels"], result["preds"], class_names)
    out = args.out or default_output_dir(args.checkpoint, f"eval_{args.split}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{STAGE} on {Path(data.source).name} ({args.split}, {len(labels)} images)"
    print(title)
    print(format_report(report))
    print(format_confusion(report["confusion_matrix"], class_names))
    plot_confusion(report["confusion_matrix"], class_names, out / "confusion.png", title=title)
    # calibration, the most confident mistakes, the normalised confusion matrix
    extra = write_eval_figures(out, images, result, class_names, title)
    if args.tta == "tencrop":
        tta = evaluate_tencrop(model, loader, device)
        extra["tencrop"] = {key: tta[key] for key in ("loss", "accuracy", "macro_f1")}
        print(f"ten-crop: accuracy {100 * tta['accuracy']:.1f}% | "
              f"macro-F1 {tta['macro_f1']:.3f} (single crop: "
              f"{100 * report['accuracy']:.1f}% | {report['macro_f1']:.3f})")
    faces = (model, images, labels, class_names, preprocessing, device)
    if args.gradcam:
        write_gradcam(*faces, out / "gradcam.png", title)
    if args.attention:
        write_attention(*faces, out / "attention.png", title)
    rows = prediction_rows(result, class_names, data.files.get(args.split))  # one per image
    write_metrics_csv(out / "predictions.csv", rows)
    summary = {
        "stage": STAGE,
        "checkpoint": str(args.checkpoint),
        "data": data.source,
        "split": args.split,
        "loss": result["loss"],
    }
    write_json(out / "report.json", {**summary, **report, **extra})
    print(f"accuracy {100 * report['accuracy']:.1f}% | macro-F1 {report['macro_f1']:.3f} | "
          f"ECE {extra['ece']:.3f} | wrote {out}")
    return report


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
