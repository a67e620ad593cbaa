"""Where a model looks: Grad-CAM heat maps, and the spatial attention of a model that has it.

    grad_cam(model, images)           where the evidence for a class lies, from plain PyTorch hooks
    attention_maps(model, batch)      03_attention's CBAM maps, at the input's size
    write_gradcam / write_attention   gradcam.png and attention.png, as eval.py writes them
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.data import eval_transform
from common.plots import plt, save_figure, show_face  # plt: pyplot set to write files only


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
    """The indices of `per_class` faces of every class, and those faces as one normalised batch."""
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
            for p, (heat, map_kind) in enumerate(maps):
                ax = axes[row, k * panels + p]
                show_face(ax, images[i])
                ax.imshow(np.asarray(heat), cmap="jet", alpha=0.45, vmin=0, vmax=1)
                caption = f"{class_names[int(preds[i])][:8]} {float(confidences[i]):.2f}" if p == 0 else map_kind
                ax.set_title(caption, fontsize=7, color="black" if int(preds[i]) == row else "red")
    kinds = f"{kind} (left) and attention map (right)" if attention is not None else kind
    fig.suptitle(f"{title}\n{kinds}, scaled per face; rows: true class, caption: predicted, red: wrong", fontsize=9)
    fig.subplots_adjust(left=0.1, wspace=0.05, hspace=0.35)
    save_figure(fig, path)
