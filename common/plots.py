"""Plot helpers that write PNG files (matplotlib without a display)."""
import matplotlib

matplotlib.use("Agg")  # no window needed; works on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig.savefig(path, dpi=100)
    plt.close(fig)
