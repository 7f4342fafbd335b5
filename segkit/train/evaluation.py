"""TODO docstring"""

from __future__ import annotations

import logging
import os
import random
from collections import OrderedDict
import numpy as np
from segkit import compat
import torch  # noqa: E402
from mmengine.dist import is_main_process  # noqa: E402
from mmengine.hooks import CheckpointHook, Hook  # noqa: E402
from mmengine.logging import MMLogger, print_log  # noqa: E402
from mmengine.logging.logger import MMFormatter  # noqa: E402
from mmengine.optim import DefaultOptimWrapperConstructor  # noqa: E402
from mmengine.optim.scheduler import OneCycleLR  # noqa: E402
from mmengine.registry import (  # noqa: E402
    HOOKS,
    OPTIM_WRAPPER_CONSTRUCTORS,
    PARAM_SCHEDULERS,
    RUNNERS,
)
from mmengine.runner import Runner  # noqa: E402
from mmseg.datasets import BaseSegDataset  # noqa: E402
from mmseg.engine.hooks import SegVisualizationHook  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.registry import DATASETS, METRICS  # noqa: E402
from torch.nn import GroupNorm, LayerNorm  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402
from torch.nn.modules.instancenorm import _InstanceNorm  # noqa: E402
import segkit.backbones  # noqa: E402,F401  (registers ConvNeXt, EfficientNetLite0)
import segkit.batch_mix  # noqa: E402,F401  (registers SegCutMix, SegClassMix, MixSegDataPreProcessor)
import segkit.data_cache  # noqa: E402,F401  (registers the cached-image transforms)
import segkit.losses  # noqa: E402,F401  (registers the losses that skip ignored pixels)
from segkit.classes import ClassTable  # noqa: E402
from segkit.metrics import iou_from_areas, mean_iou  # noqa: E402
from segkit.sources import data_list  # noqa: E402


@METRICS.register_module()
class SegkitIoUMetric(IoUMetric):
    """mmseg's IoUMetric reporting fractions (0-1, as the leaderboard does) and each
    class's IoU as `IoU.<class>`; classes absent from truth and prediction are left out of
    the mean."""

    default_prefix = ""  # the keys stay `mIoU`, `IoU.<class>` (and mmengine stays quiet)

    def compute_metrics(self, results: list) -> dict:
        inter, union, _, label = (np.asarray(sum(r), np.float64) for r in zip(*results))
        iou = iou_from_areas(inter, union)
        miou = mean_iou(iou)
        out = OrderedDict(mIoU=0.0 if np.isnan(miou) else miou,
                          aAcc=float(inter.sum() / max(label.sum(), 1)))
        names = self.dataset_meta["classes"]
        for name, value in zip(names, iou):
            out[f"IoU.{name}"] = float(value)
        table = "\n".join(f"  {n:<16} {v:.4f}" for n, v in zip(names, iou))
        print_log(f"per-class IoU:\n{table}\n  mIoU {out['mIoU']:.4f}", logger="current")
        return out
