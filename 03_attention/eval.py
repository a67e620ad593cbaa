"""Evaluate a checkpoint of this stage: accuracy, macro-F1, per-class table, confusion matrix.

    python 03_attention/eval.py --checkpoint runs/03_attention/<run>/best.pt            # test split
    python 03_attention/eval.py --checkpoint runs/03_attention/<run>/best.pt --split val
    python 03_attention/eval.py --checkpoint runs/03_attention/<run>/best.pt --attention --gradcam

Writes report.json, confusion.png (counts), confusion_normalized.png, mistakes.png (the most
confident mistakes), reliability.png (calibration), with --gradcam gradcam.png,
with --attention attention.png (03_attention).

`evaluate()` is also what train.py calls every epoch, so validation during training and the
final test are the same code. This file is identical in every stage except this docstring.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, so `import common` works from any folder

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from analysis.calibration import write_eval_figures
from analysis.heatmaps import write_attention, write_gradcam
from analysis.tencrop import evaluate_tencrop
from common.checkpoint import default_output_dir, load_checkpoint, require_course_keys, write_json
from common.data import ImageDataset, eval_transform, find_default_data, load_data
from common.guard import output_dir, positive_int
from common.metrics import classification_report, format_confusion, format_report
from common.plots import plot_confusion
from common.runtime import UserError, import_sibling, pick_device

STAGE = Path(__file__).resolve().parent.name


@torch.no_grad()
def evaluate(model, loader, device):
    """Mean cross-entropy, accuracy, macro-F1 and the raw predictions over a loader."""
    model.eval()  # dropout off, BatchNorm uses its running statistics
    total_loss, all_labels, all_probs = 0.0, [], []
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        all_labels.append(labels.cpu())
        all_probs.append(logits.softmax(dim=1).cpu())
    labels, probs = torch.cat(all_labels), torch.cat(all_probs)
    preds = probs.argmax(dim=1)
    num_classes = probs.shape[1]
    report = classification_report(labels, preds, list(range(num_classes)))
    return {"loss": total_loss / len(labels), "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "labels": labels, "preds": preds, "probs": probs}


def load_model(checkpoint):
    """Rebuild this stage's model from a checkpoint (on the CPU; move it afterwards)."""
    model_lib = import_sibling(__file__, "model")
    model = model_lib.build_model(len(checkpoint["class_names"]), checkpoint["preprocessing"]["channels"],
                                  **checkpoint.get("model_kwargs", {}))
    model.load_state_dict(checkpoint["model"])
    return model


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=f"Evaluate a {STAGE} checkpoint.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="best.pt or last.pt from a run folder")
    parser.add_argument("--data", help="data to evaluate on (default: the data the run trained on)")
    parser.add_argument("--split", choices=["test", "val", "train"], default="test",
                        help="test = PrivateTest: report it once, after choosing the model on val")
    parser.add_argument("--out", type=output_dir,
                        help="folder for the report (default: <run folder>/eval_<split>, "
                             "runs/shipped/<name>/eval_<split> for a file in weights/)")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--tta", choices=["none", "tencrop"], default="none",
                        help="tencrop: also report accuracy averaged over ten shifted and mirrored crops")
    parser.add_argument("--gradcam", action="store_true", help="also write gradcam.png: where the model looked")
    parser.add_argument("--attention", action="store_true",
                        help="also write attention.png: the model's spatial attention maps (03_attention)")
    return parser.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)  # refuses bare weights, a pickle that runs code, NaN weights
    require_course_keys(checkpoint, args.checkpoint)
    if checkpoint["stage"] != STAGE:
        raise UserError(f"{args.checkpoint}: was trained by stage {checkpoint['stage']}; "
                        f"use python {checkpoint['stage']}/eval.py")
    device = pick_device(args.device)
    model = load_model(checkpoint).to(device)
    if args.attention and not hasattr(model, "attention_maps"):
        raise UserError(f"{STAGE}: this stage's model has no attention maps; use 03_attention (or --gradcam)")
    config = checkpoint["config"]  # read the data the way the run did (FER+ labels included)
    data_path = args.data or config["data"]
    if not Path(data_path).exists() and data_path != "builtin" and find_default_data():
        data_path = str(find_default_data())  # a shipped or copied checkpoint: this clone's data/ instead
    data = load_data(data_path, seed=config["seed"], labels=config.get("labels", "fer2013"),
                     ferplus=config.get("ferplus"), ferplus_mode=config.get("ferplus_mode", "majority"))
    class_names = checkpoint["class_names"]
    if data.class_names != class_names:
        raise UserError(f"{data.source}: classes {data.class_names} differ from the checkpoint's {class_names}")
    images, labels = data.split(args.split)
    loader = DataLoader(ImageDataset(images, labels, eval_transform(checkpoint["preprocessing"])),
                        batch_size=args.batch_size)
    result = evaluate(model, loader, device)
    report = classification_report(result["labels"], result["preds"], class_names)
    out = Path(args.out) if args.out else default_output_dir(args.checkpoint, f"eval_{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    title = f"{STAGE} on {Path(data.source).name} ({args.split}, {len(labels)} images)"
    print(title)
    print(format_report(report))
    print(format_confusion(report["confusion_matrix"], class_names))
    plot_confusion(report["confusion_matrix"], class_names, out / "confusion.png", title=title)
    extra = write_eval_figures(out, images, result, class_names, title)  # calibration, mistakes, normalised confusion
    if args.tta == "tencrop":
        tta = evaluate_tencrop(model, loader, device)
        extra["tencrop"] = {key: tta[key] for key in ("loss", "accuracy", "macro_f1")}
        print(f"ten-crop: accuracy {100 * tta['accuracy']:.1f}% | macro-F1 {tta['macro_f1']:.3f} "
              f"(single crop: {100 * report['accuracy']:.1f}% | {report['macro_f1']:.3f})")
    if args.gradcam:
        write_gradcam(model, images, labels, class_names, checkpoint["preprocessing"], device, out / "gradcam.png", title)
    if args.attention:
        write_attention(model, images, labels, class_names, checkpoint["preprocessing"], device, out / "attention.png", title)
    write_json(out / "report.json", {"stage": STAGE, "checkpoint": str(args.checkpoint), "data": data.source,
                                     "split": args.split, "loss": result["loss"], **report, **extra})
    print(f"accuracy {100 * report['accuracy']:.1f}% | macro-F1 {report['macro_f1']:.3f} | "
          f"ECE {extra['ece']:.3f} | wrote {out}")
    return report


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
