"""Plot helpers that write PNG files (matplotlib without a display)."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no window needed; works on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.checkpoint import atomic_write  # noqa: E402


def save_figure(fig, path):
    """Write the figure through a temporary file (a stopped or failed save keeps the old PNG), then close it."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=100))
    finally:
        plt.close(fig)


def plot_curves(history, path, title=""):
    """Loss, accuracy, macro-F1 and learning rate per epoch, from metrics.csv rows."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [
        ("loss", [("train_loss", "train"), ("val_loss", "val")]),
        ("accuracy (%)", [("train_acc", "train"), ("val_acc", "val")]),
        ("val macro-F1", [("val_f1", "val")]),
        ("learning rate", [("lr", "lr")]),
    ]
    best = max(history, key=lambda row: row["val_f1"])
    for ax, (name, series) in zip(axes, panels):
        for key, label in series:
            values = [row[key] * (100 if key.endswith("_acc") else 1) for row in history]
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.axvline(best["epoch"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        if name == "learning rate":
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (best epoch {best['epoch']}: val acc {100 * best['val_acc']:.1f}%, macro-F1 {best['val_f1']:.3f})")
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion(cm, class_names, path, title="", normalize=False):
    """Counts, or with normalize=True each row divided by its true-class total (recall on the diagonal)."""
    cm = np.asarray(cm, dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(class_names), 0.8 + 0.8 * len(class_names)))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
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
            ax = axes[row, col]
            ax.axis("off")
            if col < len(idx):
                img = images[idx[col]].transpose(1, 2, 0)
                ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
        axes[row, 0].text(-0.1, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.14, wspace=0.05, hspace=0.05)
    save_figure(fig, path)


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


def _face(ax, image):
    """Show one uint8 (C, H, W) image without axes."""
    img = np.asarray(image).transpose(1, 2, 0)
    ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
    ax.axis("off")


def plot_reliability(calib, path, title=""):
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration.
    Bars below the diagonal mean over-confidence; the lower panel shows how many images each bin holds."""
    bins = calib["bins"]
    lower = np.array([b["lower"] for b in bins])
    width = bins[0]["upper"] - bins[0]["lower"]
    accuracy = np.array([b["accuracy"] for b in bins])
    confidence = np.array([b["confidence"] for b in bins])
    counts = np.array([b["count"] for b in bins])
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(4.6, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = counts > 0
    ax.bar(lower[filled], accuracy[filled], width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(lower[filled], confidence[filled] - accuracy[filled], width, bottom=accuracy[filled], align="edge",
           color="red", alpha=0.3, edgecolor="red", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title}\nexpected calibration error {calib['ece']:.3f}", fontsize=9)
    ax_count.bar(lower, counts, width, align="edge", color="grey")
    ax_count.set_xlabel("confidence (top probability)")
    ax_count.set_ylabel("images")
    ax_count.set_xlim(0, 1)
    fig.tight_layout()
    save_figure(fig, path)


def plot_mistakes(images, labels, preds, confidences, class_names, path, title="", cols=8):
    """A grid of misclassified images, each captioned true -> predicted and the predicted probability."""
    n = len(labels)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.25, rows * 1.5 + 0.5), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            _face(ax, images[k])
            ax.set_title(f"{class_names[int(labels[k])][:8]}\n-> {class_names[int(preds[k])][:8]} "
                         f"{float(confidences[k]):.2f}", fontsize=7)
    fig.suptitle(title if n else f"{title}: none", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_heatmap_grid(images, cams, labels, preds, confidences, class_names, path, per_class=6, title="",
                      attention=None, kind="Grad-CAM"):
    """One row per true class: faces with a heat map (0-1, jet) overlaid, captioned with the
    prediction (red when wrong). `kind` names the maps (Grad-CAM, spatial attention). With
    `attention` (maps like `cams`) each face gets a second panel with that map, side by side."""
    panels = 1 if attention is None else 2
    cols = per_class * panels
    fig, axes = plt.subplots(len(class_names), cols, figsize=(cols * 1.05 + 1, len(class_names) * 1.2 + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    labels = np.asarray(labels)
    for row, name in enumerate(class_names):
        axes[row, 0].text(-0.15, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=9)
        for k, i in enumerate(np.flatnonzero(labels == row)[:per_class]):
            maps = [(cams[i], kind)] + ([(attention[i], "attention")] if attention is not None else [])
            for p, (heat, kind) in enumerate(maps):
                ax = axes[row, k * panels + p]
                _face(ax, images[i])
                ax.imshow(np.asarray(heat), cmap="jet", alpha=0.45, vmin=0, vmax=1)
                caption = f"{class_names[int(preds[i])][:8]} {float(confidences[i]):.2f}" if p == 0 else kind
                ax.set_title(caption, fontsize=7, color="black" if int(preds[i]) == row else "red")
    kinds = f"{kind} (left) and attention map (right)" if attention is not None else kind
    fig.suptitle(f"{title}\n{kinds}, scaled per face; rows: true class, caption: predicted, red: wrong", fontsize=9)
    fig.subplots_adjust(left=0.1, wspace=0.05, hspace=0.35)
    save_figure(fig, path)


def plot_comparison(rows, path):
    """Grouped bars per run: validation and (when evaluated) test accuracy and macro-F1."""
    metrics = [("val_acc", "val accuracy"), ("val_f1", "val macro-F1"), ("test_acc", "test accuracy"),
               ("test_f1", "test macro-F1")]
    metrics = [(key, label) for key, label in metrics if any(r[key] is not None for r in rows)]
    x = np.arange(len(rows))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(rows), 4.0))
    for k, (key, label) in enumerate(metrics):
        values = [r[key] if r[key] is not None else 0 for r in rows]
        bars = ax.bar(x + (k - (len(metrics) - 1) / 2) * width, values, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.2f}" if r[key] is not None else "" for v, r in zip(values, rows)], fontsize=7)
    ax.set_xticks(x, [f"{r['stage']}\n{r['data']}\n{r['run']}" for r in rows], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy / macro-F1")
    ax.set_title("stages compared (validation: best epoch by macro-F1)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
