r"""Average the class probabilities of several checkpoints (any stages) and measure the ensemble.

    python 05_deploy/ensemble.py runs/01_baseline/<run>/best.pt runs/02_deeper/<run>/best.pt \
        runs/03_attention/<run>/best.pt
    python 05_deploy/ensemble.py runs/0[123]_*/<run>/best.pt --tta tencrop --fit-weights
    python 05_deploy/export.py --checkpoint runs/05_deploy/ensemble-<time>/ensemble.pt  # one graph
    python 05_deploy/predict.py --model runs/05_deploy/ensemble-<time>/ensemble.onnx photo.jpg

Models with different architectures and recipes make partly different mistakes, so the mean of
their softmax outputs is right more often than most of them alone. Members must predict the same
classes in the same order and take the same input size; each one gets the faces in its own
channels (04_affectnet: RGB, 01-03: gray) and its own normalisation, inside the ensemble's forward.

Prints each member's and the ensemble's accuracy, macro-F1 and per-class F1 as a Markdown table.
Writes to --out: report.json, confusion.png (the ensemble's) and ensemble.pt, every member and its
weight in one file that export.py, predict.py and benchmark.py take like a best.pt.
`--fit-weights` fits the member weights on the validation split (PublicTest), never on test.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from analysis.tencrop import ten_crops
from common.checkpoint import load_checkpoint, save_checkpoint, write_json
from common.data import ImageDataset, eval_transform, load_data
from common.metrics import classification_report
from common.plots import plot_confusion
from common.runtime import RUNS_DIR, UserError, import_sibling, pick_device

faces = import_sibling(__file__, "faces")
# RGB -> gray as Pillow's "L" (ITU-R 601), the conversion the gray stages trained on
LUMA = [0.299, 0.587, 0.114]
MEMBER_KEYS = (
    "stage",
    "model",
    "model_kwargs",
    "class_names",
    "preprocessing",
    "config",
    "members",
    "weights",
)


class Member(nn.Module):
    """One checkpoint's model behind its own input conversion: 0-1 pixels (N, C, S, S) ->
    probabilities (N, K)."""

    def __init__(self, model, preprocessing):
        super().__init__()
        self.model = model
        self.channels = preprocessing["channels"]
        self.register_buffer(
            "mean",
            torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "std",
            torch.tensor(preprocessing["std"]).view(1, -1, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "luma",
            torch.tensor(LUMA).view(1, 3, 1, 1),
            persistent=False,
        )

    def forward(self, images):
        # gray faces for an RGB model are repeated; RGB for a gray one weighed
        if images.shape[1] != self.channels:
            images = (
                images.repeat(1, 3, 1, 1)
                if self.channels == 3
                else (images * self.luma).sum(dim=1, keepdim=True)
            )
        return self.model((images - self.mean) / self.std).softmax(dim=1)


class Ensemble(nn.Module):
    """The weighted mean of the members' probabilities. forward() returns its logarithm: softmax,
    which every tool applies to a model's output, turns it back into exactly those probabilities."""

    def __init__(self, members, weights):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))

    def member_probs(self, images):
        return torch.stack([member(images) for member in self.members])  # (M, N, K)

    def forward(self, images):
        probs = (self.weights.view(-1, 1, 1) * self.member_probs(images)).sum(dim=0)  # (N, K)
        return probs.clamp(min=1e-12).log()


def check_members(checkpoints, paths):
    """One-line UserError unless every member predicts the same classes and takes the same
    input size."""
    if len(checkpoints) < 2:
        raise UserError("give two or more checkpoints to average "
                        "(for one, use its stage's eval.py)")
    first, first_path = checkpoints[0], paths[0]
    for checkpoint, path in zip(checkpoints[1:], paths[1:]):
        if list(checkpoint["class_names"]) != list(first["class_names"]):
            raise UserError(f"{first_path} and {path} predict different classes "
                            f"({', '.join(first['class_names'])} vs "
                            f"{', '.join(checkpoint['class_names'])}); "
                            f"ensemble models trained on the same labels")
        if checkpoint["preprocessing"]["size"] != first["preprocessing"]["size"]:
            raise UserError(f"{first_path} and {path} take different input sizes "
                            f"({first['preprocessing']['size']} vs "
                            f"{checkpoint['preprocessing']['size']}); "
                            f"train them at one size (04: --image-size)")


def ensemble_checkpoint(checkpoints, paths, weights):
    """Every member (weights and how to rebuild it, no optimizer state) in one plain-types dict."""
    # RGB input if any member wants colour
    channels = max(c["preprocessing"]["channels"] for c in checkpoints)
    members = [
        {**{k: c[k] for k in MEMBER_KEYS if k in c}, "path": str(p)}
        for c, p in zip(checkpoints, paths)
    ]
    return {
        "stage": "ensemble",
        "members": members,
        "weights": [float(w) for w in weights],
        "class_names": list(checkpoints[0]["class_names"]),
        "preprocessing": {
            "size": checkpoints[0]["preprocessing"]["size"],
            "channels": channels,
            "mean": [0.0] * channels,  # 0-1 pixels; members normalise
            "std": [1.0] * channels,
        },
    }


def from_checkpoint(checkpoint):
    """The Ensemble of an ensemble.pt (what faces.model_from_checkpoint calls), on the CPU in
    eval mode."""
    members = [Member(faces.model_from_checkpoint(m, m.get("path", "member")), m["preprocessing"])
               for m in checkpoint["members"]]
    return Ensemble(members, checkpoint["weights"]).eval()


def pixel_loader(images, labels, size, batch_size=256):
    """The faces in their own channels, resized and scaled to 0-1 pixels: each member converts and
    normalises."""
    channels = images.shape[1]
    pixels = eval_transform({"size": size, "mean": [0.0] * channels, "std": [1.0] * channels})
    return DataLoader(ImageDataset(images, labels, pixels), batch_size=batch_size)


@torch.no_grad()
def member_probabilities(ensemble, loader, device, tta="none"):
    """Every member's probabilities over a loader (M, N, K), and the labels (N,)."""
    ensemble.eval()
    all_probs, all_labels = [], []
    for images, labels in loader:
        images = images.to(device)
        # the mean over ten shifted and mirrored views, as eval.py --tta tencrop
        if tta == "tencrop":
            probs = ensemble.member_probs(ten_crops(images).flatten(0, 1))  # (M, B * 10, K)
            probs = probs.view(len(ensemble.members), len(images), 10, -1).mean(dim=2)
        else:
            probs = ensemble.member_probs(images)
        all_probs.append(probs.cpu())
        all_labels.append(labels)
    return torch.cat(all_probs, dim=1), torch.cat(all_labels)


def fit_weights(probs, labels, iterations=100):
    """Member weights (>= 0, summing to 1) that minimise the ensemble's cross-entropy on
    (probs, labels).

    A softmax over free numbers keeps the weights valid; with a handful of them L-BFGS converges in
    a few steps. Fit on validation data only: weights fitted on the test split would flatter the
    result.
    """
    probs = probs.double()
    # start from the plain mean
    theta = torch.zeros(len(probs), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        mixed = (theta.softmax(dim=0).view(-1, 1, 1) * probs).sum(dim=0)
        loss = F.nll_loss(mixed.clamp(min=1e-12).log(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return theta.detach().softmax(dim=0).float()


def markdown_table(rows, class_names):
    """One row per member and one for the ensemble: weight, accuracy, macro-F1, F1 per class."""
    lines = ["| model | weight | accuracy | macro-F1 | " + " | ".join(class_names) + " |",
             "|---|--:|--:|--:|" + "--:|" * len(class_names)]
    for name, weight, report in rows:
        f1s = " | ".join(f"{row['f1']:.3f}" for row in report["per_class"])
        lines.append(f"| {name} | {weight} | {100 * report['accuracy']:.1f}% | "
                     f"{report['macro_f1']:.3f} | {f1s} |")
    return "\n".join(lines)


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "checkpoints",
        nargs="+",
        help="best.pt of two or more runs (any stages, same classes and size)",
    )
    parser.add_argument(
        "--data",
        help="data to evaluate on (default: the data the first member trained on)",
    )
    parser.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="test = PrivateTest: report it once, after choosing members and weights on val",
    )
    parser.add_argument(
        "--tta",
        choices=["none", "tencrop"],
        default="none",
        help="tencrop: every member averages ten shifted and mirrored crops of each face",
    )
    parser.add_argument(
        "--fit-weights",
        action="store_true",
        help="fit member weights on the validation split (PublicTest) instead of a plain mean",
    )
    parser.add_argument(
        "--out",
        help="folder for the report and ensemble.pt (default: runs/05_deploy/ensemble-<time>)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return parser.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    checkpoints = [load_checkpoint(path) for path in args.checkpoints]
    # refuses foreign files
    models = [faces.model_from_checkpoint(c, p) for c, p in zip(checkpoints, args.checkpoints)]
    check_members(checkpoints, args.checkpoints)
    out = (
        Path(args.out)
        if args.out
        else RUNS_DIR / "05_deploy" / time.strftime("ensemble-%Y%m%d-%H%M%S")
    )
    if (out / "ensemble.pt").exists():
        raise UserError(f"{out / 'ensemble.pt'}: already exists; "
                        f"choose another --out (nothing is overwritten)")
    class_names = list(checkpoints[0]["class_names"])
    # read the data the way the first member's run did (FER+ labels included)
    config = checkpoints[0].get("config", {})
    if not (args.data or config.get("data")):
        raise UserError(f"{args.checkpoints[0]}: its config names no data; pass --data")
    data = load_data(
        args.data or config["data"],
        seed=config.get("seed", 0),
        labels=config.get("labels", "fer2013"),
        ferplus=config.get("ferplus"),
        ferplus_mode=config.get("ferplus_mode", "majority"),
    )
    if data.class_names != class_names:
        raise UserError(f"{data.source}: classes {data.class_names} "
                        f"differ from the members' {class_names}")

    device = pick_device(args.device)
    weights = [1 / len(checkpoints)] * len(checkpoints)
    ensemble = Ensemble(
        [Member(m, c["preprocessing"]) for m, c in zip(models, checkpoints)],
        weights,
    ).to(device)
    size = checkpoints[0]["preprocessing"]["size"]
    if args.fit_weights:
        val_loader = pixel_loader(*data.split("val"), size, args.batch_size)
        val_probs, val_labels = member_probabilities(ensemble, val_loader, device, args.tta)
        ensemble.weights.copy_(fit_weights(val_probs, val_labels))
        weights = ensemble.weights.tolist()
        fitted = ", ".join(f"{c['stage']} {w:.3f}" for c, w in zip(checkpoints, weights))
        print("weights fitted on val: " + fitted)
        if args.split == "val":
            print("note: reporting the split the weights were fitted on; "
                  "the ensemble's numbers are optimistic")
    loader = pixel_loader(*data.split(args.split), size, args.batch_size)
    probs, labels = member_probabilities(ensemble, loader, device, args.tta)
    mixed = (ensemble.weights.cpu().view(-1, 1, 1) * probs).sum(dim=0)
    members = [classification_report(labels, p.argmax(dim=1), class_names) for p in probs]
    report = classification_report(labels, mixed.argmax(dim=1), class_names)

    title = (f"ensemble of {len(members)} on {Path(data.source).name} "
             f"({args.split}, {len(labels)} images, tta {args.tta})")
    rows = [
        (f"{c['stage']} `{p}`", f"{w:.3f}", r)
        for c, p, w, r in zip(checkpoints, args.checkpoints, weights, members)
    ]
    print(title)
    print(markdown_table(rows + [("**ensemble**", "", report)], class_names))
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(report["confusion_matrix"], class_names, out / "confusion.png", title=title)
    write_json(out / "report.json", {
        "data": data.source, "split": args.split, "tta": args.tta, "fit_weights": args.fit_weights,
        "members": [{"checkpoint": str(p), "stage": c["stage"], "weight": w, **r}
                    for c, p, w, r in zip(checkpoints, args.checkpoints, weights, members)],
        "ensemble": report})
    save_checkpoint(
        out / "ensemble.pt",
        ensemble_checkpoint(checkpoints, args.checkpoints, weights),
    )
    best = max(members, key=lambda r: r["accuracy"])
    print(f"ensemble: accuracy {100 * report['accuracy']:.1f}% "
          f"({100 * (report['accuracy'] - best['accuracy']):+.1f} "
          f"points over the best member) | macro-F1 {report['macro_f1']:.3f} | wrote {out} "
          f"(export: python 05_deploy/export.py --checkpoint {out / 'ensemble.pt'})")
    return {"members": members, "ensemble": report, "weights": weights, "out": out}


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
