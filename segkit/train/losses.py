"""Losses that skip ignored pixels (label 255: pseudo-label uncertainty, padding), registered
with mmseg's MODELS, and the `loss_decode` configs segkit builds from a loss text.

`loss` is a weighted sum of named terms: "ce", "focal", "ce+dice", "ce:1.0+lovasz:0.5".

| term | mmseg loss | what |
|---|---|---|
| ce | CrossEntropyLoss (mmseg's) | cross-entropy |
| focal | SoftmaxFocalLoss | multi-class focal loss, gamma 2 |
| dice | MaskedDiceLoss | mmseg's DiceLoss over labelled pixels only |
| lovasz | LovaszSoftmaxLoss | Lovasz-softmax: a surrogate of 1 - IoU, classes present |
| ohem | OhemCrossEntropyLoss | cross-entropy of the hard pixels (p < 0.7, at least 10%) |
| smooth_ce | SmoothCrossEntropyLoss | cross-entropy with label smoothing 0.1 |

Each term's options are its loss's arguments: change them with cfg_options, e.g.
`{"model.decode_head.loss_decode.1.smoothing": 0.2}` for the second term of a sum.

Example:
    >>> from segkit.recipe.losses import loss_config
    >>> loss_config("ce+dice", None, num_classes=11)[1]["type"]
    'MaskedDiceLoss'
    >>> [t["loss_weight"] for t in loss_config("ce:1.0+lovasz:0.5", None, num_classes=11)]
    [1.0, 0.5]
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from mmseg.registry import MODELS
from torch import nn

from segkit.coco.files import load_coco
from segkit.core.classes import ClassTable
from segkit.core.errors import ParameterError

# segkit leaves avg_non_ignore off on purpose where class weights are given (see loss_config);
# mmseg warns about that on every model build, in every notebook
warnings.filterwarnings("ignore", message="Default ``avg_non_ignore`` is False")


class _PixelLoss(nn.Module):
    """What segkit's losses share: a weight per class (or None), the loss's weight in a sum, the
    ignore index whose pixels count for nothing, and the name mmseg logs it under."""

    def __init__(self, class_weight=None, loss_weight: float = 1.0, ignore_index: int = 255,
                 loss_name: str = "loss"):
        super().__init__()
        self.class_weight = class_weight
        self.loss_weight = loss_weight
        self.ignore_index = ignore_index
        self._loss_name = loss_name

    @property
    def loss_name(self):
        return self._loss_name

    def _ignore(self, ignore_index):
        return self.ignore_index if ignore_index is None else ignore_index


@MODELS.register_module()
class SoftmaxFocalLoss(_PixelLoss):
    """Multi-class focal loss, -(1 - p_t)^gamma * log(p_t), averaged over labelled pixels.

    mmseg's own FocalLoss is sigmoid-only and its CPU path mis-slices the one-hot target, so
    segkit brings this one. `class_weight` scales each pixel's loss by its true class's
    weight; `ignore_index` pixels (pseudo-label uncertainty, padding) count for nothing.
    """

    def __init__(self, gamma: float = 2.0, class_weight=None, loss_weight: float = 1.0,
                 ignore_index: int = 255, loss_name: str = "loss_focal"):
        super().__init__(class_weight, loss_weight, ignore_index, loss_name)
        self.gamma = gamma

    def forward(self, pred, target, weight=None, ignore_index=None, **kwargs):
        ignore = self._ignore(ignore_index)
        valid = target != ignore
        safe = torch.where(valid, target, torch.zeros_like(target))
        log_p = torch.log_softmax(pred.float(), dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        w = valid.float()
        if self.class_weight is not None:
            w = w * pred.new_tensor(self.class_weight).float()[safe]
        if weight is not None:
            w = w * weight
        return self.loss_weight * (loss * w).sum() / w.sum().clamp_min(1.0)


@MODELS.register_module()
class MaskedDiceLoss(_PixelLoss):
    """mmseg's DiceLoss (same formula and options) over labelled pixels only.

    mmseg's DiceLoss reads `ignore_index` as a class channel to drop, not as pixels to skip:
    pixels labelled 255 get an all-zero target while their predictions still enter the sums
    (and get gradients), which would train pseudo labels' unsure pixels towards "no class".
    Here prediction and target are both zeroed on ignored pixels before the dice sums.
    """

    def __init__(self, use_sigmoid: bool = True, activate: bool = True, reduction: str = "mean",
                 naive_dice: bool = False, loss_weight: float = 1.0, ignore_index: int = 255,
                 eps: float = 1e-3, loss_name: str = "loss_dice"):
        super().__init__(None, loss_weight, ignore_index, loss_name)
        self.use_sigmoid = use_sigmoid
        self.activate = activate
        self.reduction = reduction
        self.naive_dice = naive_dice
        self.eps = eps

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None,
                ignore_index=None, **kwargs):
        from mmseg.models.losses.dice_loss import dice_loss

        ignore = self._ignore(ignore_index)
        valid = (target != ignore).unsqueeze(1)
        safe = torch.where(valid.squeeze(1), target, torch.zeros_like(target)).long()
        one_hot = nn.functional.one_hot(safe, pred.shape[1]).permute(0, 3, 1, 2) * valid
        if self.activate:
            pred = pred.sigmoid() if self.use_sigmoid else pred.softmax(dim=1)
        pred = pred * valid
        return self.loss_weight * dice_loss(
            pred, one_hot, weight, eps=self.eps, reduction=reduction_override or self.reduction,
            naive_dice=self.naive_dice, avg_factor=avg_factor, ignore_index=None)


def _valid_pixels(pred, target, ignore):
    """(logits (P, C), labels (P,)) of the pixels whose label is not `ignore`."""
    valid = target != ignore
    return pred.float().permute(0, 2, 3, 1)[valid], target[valid]


@MODELS.register_module()
class LovaszSoftmaxLoss(_PixelLoss):
    """The Lovasz-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018): a convex
    surrogate of 1 - IoU, optimised directly.

    For each class c, the pixel errors m_i = |[y_i = c] - p_i(c)| of the softmax
    probabilities are sorted in decreasing order and weighted by the steps of the Jaccard
    loss along that order (the Lovasz extension's gradient: Delta J_c evaluated on the
    growing set of the largest errors); the loss is the mean over classes present in the
    labels (`classes="present"`) or over all classes (`"all"`). Ignored pixels are taken out
    before anything is computed. `class_weight` turns the mean over classes into a weighted
    mean; `per_image` computes it per image and averages.
    """

    def __init__(self, classes: str = "present", per_image: bool = False, class_weight=None,
                 loss_weight: float = 1.0, ignore_index: int = 255,
                 loss_name: str = "loss_lovasz"):
        super().__init__(class_weight, loss_weight, ignore_index, loss_name)
        if classes not in ("present", "all"):
            raise ParameterError(f"LovaszSoftmaxLoss classes={classes!r}; allowed: present, all")
        self.classes = classes
        self.per_image = per_image

    @staticmethod
    def jaccard_steps(fg_sorted: torch.Tensor) -> torch.Tensor:
        """Delta J at each position of the sorted errors: J(k) - J(k - 1), where J(k), the
        Jaccard loss when the k largest errors are mistakes, is 1 - (foreground pixels not
        among them) / (foreground pixels plus the background pixels among them)."""
        total = fg_sorted.sum()
        inter = total - fg_sorted.cumsum(0)
        union = total + (1.0 - fg_sorted).cumsum(0)
        jaccard = 1.0 - inter / union
        return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])

    def _flat_loss(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.numel() == 0:
            return probs.sum() * 0.0
        losses, weights = [], []
        for c in range(probs.shape[1]):
            fg = (labels == c).float()
            if self.classes == "present" and fg.sum() == 0:
                continue
            errors = (fg - probs[:, c]).abs()
            errors_sorted, order = torch.sort(errors, descending=True)
            losses.append(torch.dot(errors_sorted, self.jaccard_steps(fg[order])))
            weights.append(1.0 if self.class_weight is None else float(self.class_weight[c]))
        if not losses:
            return probs.sum() * 0.0
        w = probs.new_tensor(weights)
        return (torch.stack(losses) * w).sum() / w.sum().clamp_min(1e-12)

    def forward(self, pred, target, weight=None, ignore_index=None, **kwargs):
        ignore = self._ignore(ignore_index)
        if self.per_image:
            parts = [self._flat_loss(*self._probs(pred[i:i + 1], target[i:i + 1], ignore))
                     for i in range(pred.shape[0])]
            loss = torch.stack(parts).mean()
        else:
            loss = self._flat_loss(*self._probs(pred, target, ignore))
        return self.loss_weight * loss

    @staticmethod
    def _probs(pred, target, ignore):
        logits, labels = _valid_pixels(pred, target, ignore)
        return logits.softmax(dim=1), labels


@MODELS.register_module()
class OhemCrossEntropyLoss(_PixelLoss):
    """Cross-entropy over the hard pixels only (online hard example mining, Shrivastava et
    al., 2016, as segmentation uses it): labelled pixels whose probability of their true class
    is below `thresh`, and at least the `min_kept` fraction of the labelled pixels with the
    lowest such probability. Ignored pixels never count; `class_weight` weights each kept
    pixel by its true class (a weighted mean)."""

    def __init__(self, thresh: float = 0.7, min_kept: float = 0.1, class_weight=None,
                 loss_weight: float = 1.0, ignore_index: int = 255,
                 loss_name: str = "loss_ohem"):
        super().__init__(class_weight, loss_weight, ignore_index, loss_name)
        self.thresh = thresh
        self.min_kept = min_kept

    def forward(self, pred, target, weight=None, ignore_index=None, **kwargs):
        ignore = self._ignore(ignore_index)
        logits, labels = _valid_pixels(pred, target, ignore)
        if labels.numel() == 0:
            return pred.sum() * 0.0
        log_p = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
        with torch.no_grad():
            p_true = log_p.exp()
            n_min = max(1, int(round(self.min_kept * labels.numel())))
            kth = torch.kthvalue(p_true, min(n_min, labels.numel())).values
            kept = (p_true < self.thresh) | (p_true <= kth)
        w = kept.float()
        if self.class_weight is not None:
            w = w * logits.new_tensor(self.class_weight)[labels]
        return self.loss_weight * -(log_p * w).sum() / w.sum().clamp_min(1e-12)


@MODELS.register_module()
class SmoothCrossEntropyLoss(_PixelLoss):
    """Cross-entropy with label smoothing (Szegedy et al., 2016): the target puts 1 - smoothing
    on the true class and spreads `smoothing` evenly over all classes. Averaged over labelled
    pixels (weighted by their true class's `class_weight`); ignored pixels count for nothing."""

    def __init__(self, smoothing: float = 0.1, class_weight=None, loss_weight: float = 1.0,
                 ignore_index: int = 255, loss_name: str = "loss_smooth_ce"):
        super().__init__(class_weight, loss_weight, ignore_index, loss_name)
        if not 0.0 <= smoothing < 1.0:
            raise ParameterError(f"SmoothCrossEntropyLoss smoothing={smoothing}; expected "
                                 "0 <= smoothing < 1")
        self.smoothing = smoothing

    def forward(self, pred, target, weight=None, ignore_index=None, **kwargs):
        ignore = self._ignore(ignore_index)
        logits, labels = _valid_pixels(pred, target, ignore)
        if labels.numel() == 0:
            return pred.sum() * 0.0
        log_p = torch.log_softmax(logits, dim=1)
        nll = -log_p.gather(1, labels[:, None]).squeeze(1)
        loss = (1.0 - self.smoothing) * nll - self.smoothing * log_p.mean(dim=1)
        w = torch.ones_like(nll) if self.class_weight is None else \
            logits.new_tensor(self.class_weight)[labels]
        return self.loss_weight * (loss * w).sum() / w.sum().clamp_min(1e-12)


def balanced_class_weights(coco_file: str | os.PathLike, classes: ClassTable,
                           power: float = 0.5, clip: tuple[float, float] = (0.2, 5.0)
                           ) -> list[float]:
    """Median-frequency class weights for the loss, from a COCO file's label maps.

    A class's frequency is its pixels over all pixels of the images it appears in; its weight
    is median frequency / frequency (Eigen and Fergus, 2015), softened by `power` (0.5: the
    square root) and clipped, so thin rare classes (poles, signs) count more without the
    common ones being ignored. A class absent from the file gets 1.

    Example:
        balanced_class_weights("outputs/splits/fold0_train.json", TRASH)[:3]
    """
    from segkit.coco.pixels import pixel_counts

    pixels = pixel_counts(load_coco(coco_file), classes).to_numpy(np.float64)
    present = pixels > 0
    image_pixels = pixels.sum(axis=1, keepdims=True)
    seen = (image_pixels * present).sum(axis=0)
    freq = np.divide(pixels.sum(axis=0), seen, out=np.zeros(len(classes)), where=seen > 0)
    weights = np.ones(len(classes))
    known = freq > 0
    if known.any():
        weights[known] = (np.median(freq[known]) / freq[known]) ** power
    return [round(float(w), 4) for w in np.clip(weights, *clip)]


