"""Plot helpers that write PNG files (matplotlib without a display): the training curves, the
confusion matrix, and the pieces the figures of the analysis package are built from."""
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


def show_face(ax, image):
    """One uint8 (C, H, W) image on `ax`, gray or colour, without axes."""
    img = np.asarray(image).transpose(1, 2, 0)  # (H, W, C), as matplotlib wants it
    ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
    ax.axis("off")
