"""Classification metrics from predictions: confusion matrix, per-class P/R/F1, macro-F1.

Written out in torch rather than taken from scikit-learn so the course needs one package
fewer, and so a student can read how macro-F1 is built.
"""
import torch


def class_shares(labels, num_classes):
    """Labels as per-class shares, (N, num_classes) floats: a class index becomes a one-hot row,
    FER+ vote shares (already (N, num_classes)) stay as they are. Summing the rows counts images
    per class, a row's argmax is its class: the same code then serves hard and soft labels."""
    if labels.ndim == 2:
        return labels.float()
    return torch.nn.functional.one_hot(labels, num_classes).float()


def class_weights(labels, num_classes):
    """Inverse class frequency, (num_classes,): a rare class weighs more, an average image 1.
    The weight of --class-weights' loss and of --balanced-sampler's draws."""
    counts = class_shares(labels, num_classes).sum(dim=0)  # images per class (FER+: summed votes)
    return counts.sum() / (num_classes * counts.clamp(min=1))


def confusion_matrix(labels, preds, num_classes):
    """counts[t, p] = how many images of true class t were predicted as class p."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    preds = torch.as_tensor(preds, dtype=torch.long)
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(labels, preds, class_names):
    """Accuracy, macro-F1 and a per-class table, all as plain Python numbers.

    Macro-F1 averages F1 over classes, so rare classes (disgust) count as much as common ones
    (happy); accuracy alone hides a model that never predicts a rare class. Like
    scikit-learn, the average runs over classes that occur in the labels or predictions, and
    a class with no predictions has precision 0.
    """
    cm = confusion_matrix(labels, preds, len(class_names)).double()
    true_pos = cm.diag()
    support = cm.sum(dim=1)  # how many of each true class
    predicted = cm.sum(dim=0)  # how many predicted as each class
    precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), torch.zeros_like(true_pos))
    recall = torch.where(support > 0, true_pos / support.clamp(min=1), torch.zeros_like(true_pos))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(denom))
    present = (support > 0) | (predicted > 0)
    total = cm.sum().item()
    return {
        "accuracy": true_pos.sum().item() / total if total else 0.0,
        "macro_f1": f1[present].mean().item() if present.any() else 0.0,
        "per_class": [
            {"class": name, "precision": precision[i].item(), "recall": recall[i].item(),
             "f1": f1[i].item(), "support": int(support[i].item())}
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": cm.long().tolist(),
    }


def format_report(report):
    """The per-class table as text, for the terminal."""
    width = max(len(row["class"]) for row in report["per_class"]) + 2
    lines = [f"{'class':<{width}}precision  recall      f1  support"]
    for row in report["per_class"]:
        lines.append(f"{row['class']:<{width}}{row['precision']:9.3f}{row['recall']:8.3f}{row['f1']:8.3f}{row['support']:9d}")
    lines.append(f"{'accuracy':<{width}}{'':9}{'':8}{report['accuracy']:8.3f}{sum(r['support'] for r in report['per_class']):9d}")
    lines.append(f"{'macro-F1':<{width}}{'':9}{'':8}{report['macro_f1']:8.3f}")
    return "\n".join(lines)


def format_confusion(cm, class_names):
    short = [name[:7] for name in class_names]
    lines = ["true \\ pred " + " ".join(f"{s:>7}" for s in short)]
    for name, row in zip(short, cm):
        lines.append(f"{name:>11} " + " ".join(f"{int(v):7d}" for v in row))
    return "\n".join(lines)


def prediction_rows(result, class_names, files=None):
    """One dict per image (its file where the reader knows it, true class, predicted class,
    confidence), for predictions.csv: the table to sort, filter and group mistakes by."""
    confidence = result["probs"].max(dim=1).values.tolist()
    rows = []
    for i, (label, pred) in enumerate(zip(result["labels"].tolist(), result["preds"].tolist())):
        rows.append({
            "index": i,
            "file": files[i] if files else "",
            "label": class_names[label],
            "prediction": class_names[pred],
            "confidence": round(confidence[i], 4),
        })
    return rows
