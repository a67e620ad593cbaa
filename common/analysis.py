"""Looking past accuracy: calibration, the most confident mistakes, ten-crop testing and Grad-CAM.

Every stage's eval.py calls these, so the numbers and pictures mean the same in every stage:

    calibration(probs, labels)        expected calibration error (ECE) and reliability-diagram bins
    most_confident_mistakes(...)      the wrong predictions the model was surest of
    ten_crops / evaluate_tencrop      test-time augmentation: average ten views of every face
    grad_cam(model, images)           where the model looked, from plain PyTorch hooks
"""
import torch
import torch.nn.functional as F
from torch import nn

from common.data import eval_transform
from common.metrics import classification_report
from common.plots import plot_confusion, plot_heatmap_grid, plot_mistakes, plot_reliability


# ---------------------------------------------------------------- calibration

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


# ---------------------------------------------------------------- ten-crop

def ten_crops(images, zoom=1.1):
    """(B, C, S, S) -> (B, 10, C, S, S): four corners and the centre of the image enlarged by `zoom`,
    and the mirror image of each.

    The classic FER2013 recipe trains on random 44x44 crops of the 48x48 faces and tests on ten
    44x44 crops. Our models take the full 48x48 (01_baseline's classifier is sized for it), so
    instead the image is enlarged by 10% (48 -> 53) and ten 48x48 windows are cut from that: the
    same shifts (about +-2.5 pixels) and zoom that training-time augmentation produces (02_deeper's
    RandomAffine: translate 10%, scale 0.9-1.1, flips), without changing the size the model sees.
    A model trained without such augmentation (01_baseline) may not gain, or may even lose.
    """
    size = images.shape[-1]
    big = round(size * zoom)
    enlarged = F.interpolate(images, size=(big, big), mode="bilinear", align_corners=False, antialias=False)
    m, c = big - size, (big - size) // 2  # last valid offset, centre offset
    crops = [enlarged[..., y:y + size, x:x + size] for y, x in [(0, 0), (0, m), (m, 0), (m, m), (c, c)]]
    crops += [crop.flip(-1) for crop in crops]  # a mirrored face keeps its expression
    return torch.stack(crops, dim=1)


@torch.no_grad()
def evaluate_tencrop(model, loader, device):
    """Like eval.evaluate, but each image's class probabilities are the mean over its ten crops."""
    model.eval()
    all_labels, all_probs = [], []
    for images, labels in loader:
        crops = ten_crops(images.to(device))  # (B, 10, C, S, S)
        logits = model(crops.flatten(0, 1))  # (B * 10, K)
        all_probs.append(logits.softmax(dim=1).view(len(images), 10, -1).mean(dim=1).cpu())
        all_labels.append(labels)
    labels, probs = torch.cat(all_labels), torch.cat(all_probs)
    preds = probs.argmax(dim=1)
    report = classification_report(labels, preds, list(range(probs.shape[1])))
    loss = F.nll_loss(probs.clamp(min=1e-12).log(), labels).item()
    return {"loss": loss, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "labels": labels, "preds": preds, "probs": probs}


# ---------------------------------------------------------------- Grad-CAM

def find_gradcam_layer(model, image_shape):
    """The model's `gradcam_layer` (a module or its name) if it names one, else the last Conv2d
    that runs and outputs a feature map: more than one channel, more than 1x1 pixels.

    Order of execution, not of definition, decides "last", and the size rule skips attention
    convolutions: CBAM's channel MLP works on (C, 1, 1) vectors and its spatial conv outputs one map.
    """
    layer = getattr(model, "gradcam_layer", None)
    if layer is not None:
        return model.get_submodule(layer) if isinstance(layer, str) else layer
    ran = []
    hooks = [m.register_forward_hook(lambda module, inputs, output: ran.append((module, output.shape)))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *image_shape, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    feature_maps = [module for module, shape in ran if shape[1] > 1 and shape[-1] * shape[-2] > 1]
    if not feature_maps:
        raise ValueError(f"{type(model).__name__} has no Conv2d producing a feature map; set model.gradcam_layer")
    return feature_maps[-1]


def grad_cam(model, images, layer=None, classes=None):
    """Grad-CAM (Selvaraju et al., 2017) for a batch of normalised images (B, C, H, W).

    The gradient of the class score with respect to the layer's feature maps, averaged over each
    map, says how much that map matters for the class; the weighted sum of the maps, through a
    ReLU (keep only evidence *for* the class), is the heat map. Returns maps (B, H, W) scaled to
    [0, 1] per image and the softmax probabilities (B, K). `classes` defaults to the prediction.
    """
    layer = find_gradcam_layer(model, images.shape[1:]) if layer is None else layer
    model.eval()
    store = {}

    def keep(module, inputs, output):  # forward hook: the maps, and a tensor hook for their gradient
        store["maps"] = output.detach().clone()  # clone: an in-place ReLU may overwrite `output` next
        output.register_hook(lambda grad: store.__setitem__("grads", grad.detach()))

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(images.detach().clone().requires_grad_(True))  # a graph even if weights are frozen
            classes = logits.argmax(dim=1) if classes is None else torch.as_tensor(classes, device=logits.device)
            model.zero_grad(set_to_none=True)
            logits.gather(1, classes[:, None]).sum().backward()  # images are independent: one backward pass
    finally:
        handle.remove()
    weights = store["grads"].mean(dim=(2, 3), keepdim=True)  # (B, K_maps, 1, 1)
    cam = F.relu((weights * store["maps"]).sum(dim=1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return scale_maps(cam), logits.softmax(dim=1).detach()


def scale_maps(maps):
    """Each map to [0, 1] (min-max); a flat map becomes all zeros."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp(min=1e-8)


def pick_per_class(labels, num_classes, per_class):
    """The first `per_class` indices of every class, class by class (rows of the Grad-CAM grid)."""
    labels = torch.as_tensor(labels)
    return torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(num_classes)])


def attention_maps(model, batch):
    """The model's spatial attention (03_attention's CBAM maps) at the input's size, scaled 0-1 per face."""
    with torch.no_grad():
        maps = model.attention_maps(batch)
    maps = maps if maps.ndim == 4 else maps[:, None]  # (B, 1, h, w)
    maps = F.interpolate(maps.float(), size=batch.shape[-2:], mode="bilinear", align_corners=False)
    return scale_maps(maps[:, 0]).cpu()  # (B, H, W)


def _faces_per_class(images, labels, class_names, preprocessing, device, per_class):
    index = pick_per_class(labels, len(class_names), per_class)
    transform = eval_transform(preprocessing)
    return index, torch.stack([transform(image) for image in images[index]]).to(device)


def write_gradcam(model, images, labels, class_names, preprocessing, device, path, title="", per_class=6):
    """gradcam.png: `per_class` faces of every true class, each with the heat map of its predicted
    class. A model that defines `attention_maps(images)` (03_attention: its CBAM spatial maps,
    (B, h, w)) also gets that map beside each Grad-CAM, to compare where attention and evidence lie."""
    index, batch = _faces_per_class(images, labels, class_names, preprocessing, device, per_class)
    cams, probs = grad_cam(model, batch)
    attention = attention_maps(model, batch) if hasattr(model, "attention_maps") else None
    confidence, preds = probs.max(dim=1)
    plot_heatmap_grid(images[index], cams.cpu(), labels[index], preds.cpu(), confidence.cpu(), class_names, path,
                      per_class=per_class, title=title, attention=attention)
    return cams


@torch.no_grad()
def write_attention(model, images, labels, class_names, preprocessing, device, path, title="", per_class=6):
    """attention.png: `per_class` faces of every true class with the model's spatial attention overlaid."""
    model.eval()
    index, batch = _faces_per_class(images, labels, class_names, preprocessing, device, per_class)
    confidence, preds = model(batch).softmax(dim=1).max(dim=1)
    plot_heatmap_grid(images[index], attention_maps(model, batch), labels[index], preds.cpu(), confidence.cpu(),
                      class_names, path, per_class=per_class, title=title, kind="spatial attention")
