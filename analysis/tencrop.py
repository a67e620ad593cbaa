"""Ten-crop testing: average a model's answers over ten shifted and mirrored views of every face."""
import torch
import torch.nn.functional as F

from common.metrics import classification_report


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
