"""Losses that skip ignored pixels (label 255: pseudo-label uncertainty, padding), registered
with mmseg's MODELS, and the `loss_decode` configs segkit builds from a loss name.

Example:
    >>> loss_config("ce+dice", None, num_classes=11)[1]["type"]
    'MaskedDiceLoss'
"""

from __future__ import annotations

import os

import numpy as np
import torch
from mmseg.registry import MODELS
from torch import nn

from segkit.checks import check_choice
from segkit.classes import IGNORE_INDEX, ClassTable
from segkit.coco import load_coco
from segkit.errors import ParameterError
from segkit.train_parameters import LOSSES


@MODELS.register_module()
class SoftmaxFocalLoss(nn.Module):
    """Multi-class focal loss, -(1 - p_t)^gamma * log(p_t), averaged over labelled pixels.

    mmseg's own FocalLoss is sigmoid-only and its CPU path mis-slices the one-hot target, so
    segkit brings this one. `class_weight` scales each pixel's loss by its true class's
    weight; `ignore_index` pixels (pseudo-label uncertainty, padding) count for nothing.
    """

    def __init__(self, gamma: float = 2.0, class_weight=None, loss_weight: float = 1.0,
                 ignore_index: int = 255, loss_name: str = "loss_focal"):
        super().__init__()
        self.gamma = gamma
        self.class_weight = class_weight
        self.loss_weight = loss_weight
        self.ignore_index = ignore_index
        self._loss_name = loss_name

    def forward(self, pred, target, weight=None, ignore_index=None, **kwargs):
        ignore = self.ignore_index if ignore_index is None else ignore_index
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

    @property
    def loss_name(self):
        return self._loss_name


@MODELS.register_module()
class MaskedDiceLoss(nn.Module):
    """mmseg's DiceLoss (same formula and options) over labelled pixels only.

    mmseg's DiceLoss reads `ignore_index` as a class channel to drop, not as pixels to skip:
    pixels labelled 255 get an all-zero target while their predictions still enter the sums
    (and get gradients), which would train pseudo labels' unsure pixels towards "no class".
    Here prediction and target are both zeroed on ignored pixels before the dice sums.
    """

    def __init__(self, use_sigmoid: bool = True, activate: bool = True, reduction: str = "mean",
                 naive_dice: bool = False, loss_weight: float = 1.0, ignore_index: int = 255,
                 eps: float = 1e-3, loss_name: str = "loss_dice"):
        super().__init__()
        self.use_sigmoid = use_sigmoid
        self.activate = activate
        self.reduction = reduction
        self.naive_dice = naive_dice
        self.loss_weight = loss_weight
        self.ignore_index = ignore_index
        self.eps = eps
        self._loss_name = loss_name

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None,
                ignore_index=None, **kwargs):
        from mmseg.models.losses.dice_loss import dice_loss

        ignore = self.ignore_index if ignore_index is None else ignore_index
        valid = (target != ignore).unsqueeze(1)
        safe = torch.where(valid.squeeze(1), target, torch.zeros_like(target)).long()
        one_hot = nn.functional.one_hot(safe, pred.shape[1]).permute(0, 3, 1, 2) * valid
        if self.activate:
            pred = pred.sigmoid() if self.use_sigmoid else pred.softmax(dim=1)
        pred = pred * valid
        return self.loss_weight * dice_loss(
            pred, one_hot, weight, eps=self.eps, reduction=reduction_override or self.reduction,
            naive_dice=self.naive_dice, avg_factor=avg_factor, ignore_index=None)

    @property
    def loss_name(self):
        return self._loss_name


def balanced_class_weights(coco_file: str | os.PathLike, classes: ClassTable,
                           power: float = 0.5, clip: tuple[float, float] = (0.2, 5.0)
                           ) -> list[float]:
    """Median-frequency class weights for the loss, from a COCO file's label maps.

    A class's frequency is its pixels over all pixels of the images it appears in; its weight
    is median frequency / frequency (Eigen and Fergus, 2015), softened by `power` (0.5: the
    square root) and clipped, so thin rare classes (poles, signs) count more without the
    common ones being ignored. A class absent from the file gets 1.

    Example:
        >>> balanced_class_weights("outputs/splits/fold0_train.json", TRASH)[:3]  # doctest: +SKIP
        [0.38, 1.41, 0.77]
    """
    from segkit.eda import pixel_counts

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


def loss_config(loss: str, class_weights, num_classes: int) -> list[dict] | dict:
    """The mmseg `loss_decode` entry of a loss name (LOSSES), with class weights or None."""
    check_choice("loss", loss, LOSSES)
    if class_weights is not None and len(class_weights) != num_classes:
        raise ParameterError(f"class_weights has {len(class_weights)} values; "
                             f"{num_classes} classes need one each")
    weights = list(map(float, class_weights)) if class_weights is not None else None
    # avg_non_ignore: average over labelled pixels only (pseudo labels ignore many). mmseg
    # mis-indexes when it is combined with class weights, whose weighted mean already skips
    # ignored pixels, so it is only set without them.
    ce = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
              class_weight=weights, avg_non_ignore=weights is None, loss_name="loss_ce")
    # MaskedDiceLoss: mmseg's DiceLoss does not skip ignored pixels (see its docstring)
    dice = dict(type="MaskedDiceLoss", loss_weight=1.0, ignore_index=IGNORE_INDEX,
                loss_name="loss_dice")
    focal = dict(type="SoftmaxFocalLoss", gamma=2.0, class_weight=weights, loss_weight=1.0,
                 loss_name="loss_focal")
    return {"ce": ce, "focal": focal, "dice": dice, "ce+dice": [ce, dice]}[loss]
