"""Looking past accuracy: how far to trust a model's confidence, and its most confident mistakes.

    calibration(probs, labels)        expected calibration error (ECE) and reliability-diagram bins
    most_confident_mistakes(...)      the wrong predictions the model was surest of
    write_eval_figures(...)           the pictures every stage's eval.py adds beside confusion.png
"""
import numpy as np
import torch

from common.metrics import classification_report
from common.plots import plot_confusion, plt, save_figure, show_face  # plt: pyplot set to write files only


def calibration(probs, labels, n_bins=15):
    """Bin the predictions by confidence (the top probability) into `n_bins` equal-width bins.

    A calibrated model is right 70% of the time when it says 70%. ECE is the gap between
    accuracy and confidence in each bin, weighted by the share of images in the bin:
    ECE = sum_b n_b / N * |acc_b - conf_b|. Bin b holds confidences in (b/n, (b+1)/n].
    """
    probs, labels = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels)
    confidence, preds = probs.max(dim=1)
    correct = (preds == labels).double()
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        accuracy = correct[mask].mean().item() if count else 0.0
        mean_conf = confidence[mask].mean().item() if count else 0.0
        ece += count / len(labels) * abs(accuracy - mean_conf)
        bins.append({"lower": b / n_bins, "upper": (b + 1) / n_bins, "count": count,
                     "accuracy": accuracy, "confidence": mean_conf})
    return {"ece": ece, "bins": bins}


def most_confident_mistakes(probs, labels, k=24):
    """Indices of the wrong predictions, surest first: often label noise, sometimes a real blind spot."""
    confidence, preds = torch.as_tensor(probs).max(dim=1)
    wrong = torch.nonzero(preds != torch.as_tensor(labels)).flatten()
    return wrong[confidence[wrong].argsort(descending=True)][:k]


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
            show_face(ax, images[k])
            ax.set_title(f"{class_names[int(labels[k])][:8]}\n-> {class_names[int(preds[k])][:8]} "
                         f"{float(confidences[k]):.2f}", fontsize=7)
    fig.suptitle(title if n else f"{title}: none", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def write_eval_figures(out, images, result, class_names, title):
    """The pictures eval.py adds beside confusion.png; returns the numbers for report.json."""
    report = classification_report(result["labels"], result["preds"], class_names)
    plot_confusion(report["confusion_matrix"], class_names, out / "confusion_normalized.png",
                   title=f"{title}\nrow-normalised: recall on the diagonal", normalize=True)
    calib = calibration(result["probs"], result["labels"])
    plot_reliability(calib, out / "reliability.png", title=title)
    worst = most_confident_mistakes(result["probs"], result["labels"])
    confidence, preds = result["probs"].max(dim=1)
    plot_mistakes(images[worst], result["labels"][worst], preds[worst], confidence[worst], class_names,
                  out / "mistakes.png", title=f"{title}: most confident mistakes")
    return {"ece": calib["ece"], "calibration_bins": calib["bins"]}
