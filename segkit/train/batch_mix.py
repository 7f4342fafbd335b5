"""Batch mixes for segmentation, applied to the padded training batch: CutMix and ClassMix,
each mixing images and label maps together, registered with mmseg's MODELS.

mmseg's SegDataPreProcessor has a `batch_augments` argument but calls it as one function
and never builds it from a config, so a config cannot name one. `MixSegDataPreProcessor` is
SegDataPreProcessor (same arguments) whose `batch_augments` is a list of configs, built and
applied in order during training only; inference is unchanged.

Random numbers come from torch's generator (saved and restored by segkit's RNGStateHook, so a
resumed run mixes as an uninterrupted one does).

Example:
    model["data_preprocessor"] = dict(type="MixSegDataPreProcessor", ...,
        batch_augments=[dict(type="SegCutMix", prob=0.5)])
"""

from __future__ import annotations

import torch
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS

from segkit.core.classes import IGNORE_INDEX


def _labels(samples) -> list[torch.Tensor]:
    return [s.gt_sem_seg.data for s in samples]


def _set_label(sample, label: torch.Tensor) -> None:
    sample.gt_sem_seg.data = label


class _BatchMix:
    """Pairs each sample with another of the batch (a random permutation) and, with
    probability `prob` per sample, pastes a region of the partner (image and labels)."""

    def __init__(self, prob: float = 0.5):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob {prob} is not between 0 and 1")
        self.prob = prob

    def region(self, label: torch.Tensor) -> torch.Tensor:  # (H, W) bool: pasted pixels
        raise NotImplementedError

    def __call__(self, inputs: torch.Tensor, samples):
        n = inputs.shape[0]
        if n < 2 or self.prob == 0:
            return inputs, samples
        partner = torch.randperm(n)
        chosen = torch.rand(n) < self.prob
        labels = _labels(samples)
        source_inputs = inputs.clone()
        out = inputs.clone()
        for i in torch.nonzero(chosen).flatten().tolist():
            j = int(partner[i])
            if j == i:
                continue
            src_label = labels[j]
            mask = self.region(src_label[0]).to(inputs.device)
            out[i] = torch.where(mask, source_inputs[j], out[i])
            _set_label(samples[i], torch.where(mask, src_label, labels[i]))
        return out, samples


@MODELS.register_module()
class SegCutMix(_BatchMix):
    """CutMix (Yun et al., ICCV 2019) for segmentation: a box covering a fraction 1 - lambda of
    the image, lambda ~ Beta(alpha, alpha), is copied from the partner image together with the
    same box of its label map."""

    def __init__(self, prob: float = 0.5, alpha: float = 1.0):
        super().__init__(prob)
        self.alpha = float(alpha)

    def region(self, label):
        h, w = label.shape
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        bh, bw = int(round(h * (1 - lam) ** 0.5)), int(round(w * (1 - lam) ** 0.5))
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - bh // 2, 0), min(cy + (bh - bh // 2), h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + (bw - bw // 2), w)
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[y0:y1, x0:x1] = True
        return mask


@MODELS.register_module()
class SegClassMix(_BatchMix):
    """ClassMix (Olsson et al., WACV 2021): the pixels of a random half of the classes present
    in the partner's label map (ignored pixels never count as a class) are copied, image and
    labels, onto the sample."""

    def region(self, label):
        present = torch.unique(label)
        present = present[present != IGNORE_INDEX]
        if len(present) == 0:
            return torch.zeros_like(label, dtype=torch.bool)
        keep = present[torch.randperm(len(present))[: max(1, (len(present) + 1) // 2)]]
        return torch.isin(label, keep)


class _Chain:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, inputs, samples):
        for step in self.steps:
            inputs, samples = step(inputs, samples)
        return inputs, samples


@MODELS.register_module()
class MixSegDataPreProcessor(SegDataPreProcessor):
    """mmseg's SegDataPreProcessor with `batch_augments` given as a list of configs (e.g.
    `[dict(type="SegCutMix", prob=0.5)]`), built here and applied to each training batch."""

    def __init__(self, *args, batch_augments=None, **kwargs):
        super().__init__(*args, **kwargs)
        steps = [MODELS.build(cfg) if isinstance(cfg, dict) else cfg
                 for cfg in (batch_augments or [])]
        self.batch_augments = _Chain(steps) if steps else None
