"""Look at a data set before training on it: class counts, imbalance, duplicates, pixel statistics.

    python -m analysis.explore                                   # the built-in drawn faces
    python -m analysis.explore --data data/fer2013.csv --out runs/explore/fer2013
    python -m analysis.explore --data data/affectnet      # any layout load_data reads, or builtin-affectnet

The data-exploration notebook of the source write-ups did this for FER2013 and found a 16.6:1 imbalance
(happy against disgust), 1,236 duplicate images and a pixel mean of 131.0 +- 64.3. Those three
facts shape everything after: macro-F1 beside accuracy, a test split that must not share images
with train, and the normalisation constants in common/facedata.py.

Writes <out>/explore.json, <out>/class_counts.png (a histogram per split) and <out>/samples.png
(a grid of training images, one row per class).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for `python analysis/explore.py`

import argparse
import hashlib
from collections import defaultdict

import numpy as np

from common.checkpoint import write_json
from common.data import load_data
from common.guard import output_dir, positive_int
from common.plots import plt, save_figure, show_face  # plt: pyplot set to write files only
from common.runtime import RUNS_DIR, UserError


def class_counts(data):
    """{split: [images of class 0, class 1, ...]} for every split the source has."""
    return {split: np.bincount(labels.numpy(), minlength=len(data.class_names)).tolist()
            for split, (_, labels) in data.splits.items()}


def imbalance(counts, class_names):
    """Most common over least common class. A class with no images at all is listed apart:
    the ratio would be infinite, and the missing class is the real finding."""
    counts = np.asarray(counts)
    present = np.flatnonzero(counts > 0)
    most, least = present[counts[present].argmax()], present[counts[present].argmin()]
    return {"ratio": float(counts[most] / counts[least]), "most": class_names[most], "least": class_names[least],
            "missing": [class_names[i] for i in np.flatnonzero(counts == 0)]}


def image_hashes(images):
    """One SHA-1 per image of its decoded pixels, so a re-encoded copy of the same face
    (another file name, another format) still counts as the same image."""
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]


def find_duplicates(data):
    """Exact duplicates by content hash, within each split and across every pair of splits.

    within[split]: copies beyond the first of an image in that split; label_conflicts[split]:
    how many groups of identical images carry more than one label (label noise made visible);
    across["train/test"]: images of the second split whose pixels also occur in the first, a leak
    that inflates test accuracy.
    """
    hashes = {split: image_hashes(images) for split, (images, _) in data.splits.items()}
    within, conflicts = {}, {}
    for split, (_, labels) in data.splits.items():
        groups = defaultdict(set)
        for h, label in zip(hashes[split], labels.tolist()):
            groups[h].add(label)
        within[split] = len(hashes[split]) - len(groups)
        conflicts[split] = sum(1 for group in groups.values() if len(group) > 1)
    names = list(data.splits)
    seen = {split: set(h) for split, h in hashes.items()}
    across = {f"{a}/{b}": sum(1 for h in hashes[b] if h in seen[a])
              for i, a in enumerate(names) for b in names[i + 1:]}
    return {"within": within, "label_conflicts": conflicts, "across": across}


def pixel_stats(data):
    """Mean and standard deviation of the pixel values (0-255) per split, over all channels
    together; the training split's are the ones to normalise with (common/facedata.py)."""
    stats = {}
    for split, (images, _) in data.splits.items():
        pixels = images.double()
        stats[split] = {"mean": pixels.mean().item(), "std": pixels.std().item()}
    return stats


def plot_class_counts(counts, class_names, path, title=""):
    """A class histogram: one group of bars per class, one bar per split; counts = {split: [n per class]}."""
    splits = list(counts)
    x = np.arange(len(class_names))
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(class_names), 3.6))
    for k, split in enumerate(splits):
        bars = ax.bar(x + (k - (len(splits) - 1) / 2) * width, counts[split], width, label=split)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def image_grid(images, labels, class_names, path, per_class=8, title=""):
    """A grid with one row per class: uint8 images (N, C, H, W) and their labels."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    fig, axes = plt.subplots(len(class_names), per_class, figsize=(per_class * 0.9, len(class_names) * 0.95))
    for row, name in enumerate(class_names):
        idx = np.flatnonzero(labels == row)[:per_class]
        for col in range(per_class):
            axes[row, col].axis("off")
            if col < len(idx):
                show_face(axes[row, col], images[idx[col]])
        axes[row, 0].text(-0.1, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.14, wspace=0.05, hspace=0.05)
    save_figure(fig, path)


def explore(data):
    """Every number of the report as plain Python types (what explore.json holds)."""
    counts = class_counts(data)
    shape = next(iter(data.splits.values()))[0].shape  # (N, C, H, W)
    return {
        "source": data.source,
        "classes": list(data.class_names),
        "image_shape": list(shape[1:]),
        "counts": counts,
        "imbalance": {split: imbalance(c, data.class_names) for split, c in counts.items() if sum(c)},
        "duplicates": find_duplicates(data),
        "pixels": pixel_stats(data),
    }


def format_summary(summary):
    classes = summary["classes"]
    width = max(len(c) for c in classes) + 2
    splits = list(summary["counts"])
    lines = [f"{summary['source']}: {len(classes)} classes, images {'x'.join(map(str, summary['image_shape']))}",
             f"{'class':<{width}}" + "".join(f"{s:>8}" for s in splits)]
    for i, name in enumerate(classes):
        lines.append(f"{name:<{width}}" + "".join(f"{summary['counts'][s][i]:8d}" for s in splits))
    lines.append(f"{'total':<{width}}" + "".join(f"{sum(summary['counts'][s]):8d}" for s in splits))
    for split, imb in summary["imbalance"].items():
        missing = f"; no images of {', '.join(imb['missing'])}" if imb["missing"] else ""
        lines.append(f"imbalance {split}: {imb['ratio']:.2f}:1 ({imb['most']} / {imb['least']}){missing}")
    dup = summary["duplicates"]
    lines.append("duplicates within: " + ", ".join(f"{s} {n}" for s, n in dup["within"].items())
                 + " | with conflicting labels: " + ", ".join(f"{s} {n}" for s, n in dup["label_conflicts"].items()))
    if dup["across"]:
        lines.append("duplicates across: " + ", ".join(f"{pair} {n}" for pair, n in dup["across"].items()))
    lines.append("pixels (0-255): " + ", ".join(f"{s} {p['mean']:.1f} +- {p['std']:.1f}"
                                                for s, p in summary["pixels"].items()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="builtin", help="FER2013 CSV (.csv/.csv.gz), image-folder tree or builtin")
    parser.add_argument("--out", type=output_dir, help="folder for explore.json and the PNGs (default: runs/explore/<data name>)")
    parser.add_argument("--labels", choices=["fer2013", "ferplus"], default="fer2013",
                        help="ferplus: count the FER+ majority labels of --ferplus instead (8 classes)")
    parser.add_argument("--ferplus", help="path to FER+ fer2013new.csv (with --labels ferplus)")
    parser.add_argument("--per-class", type=positive_int, default=10, help="sample images per class in samples.png")
    args = parser.parse_args(argv)
    data = load_data(args.data, labels=args.labels, ferplus=args.ferplus)  # majority votes: one label per image
    name = "builtin" if args.data == "builtin" else Path(args.data).name.split(".")[0]
    out = Path(args.out) if args.out else RUNS_DIR / "explore" / name
    out.mkdir(parents=True, exist_ok=True)
    summary = explore(data)
    print(format_summary(summary))
    write_json(out / "explore.json", summary)
    plot_class_counts(summary["counts"], data.class_names, out / "class_counts.png", title=f"classes in {name}")
    images, labels = data.splits.get("train", next(iter(data.splits.values())))
    image_grid(images, labels, data.class_names, out / "samples.png", per_class=args.per_class,
               title=f"{name}: training images, one row per class")
    print(f"wrote {out / 'explore.json'}, {out / 'class_counts.png'}, {out / 'samples.png'}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
