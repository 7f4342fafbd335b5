"""The IoU metric segkit registers with mmseg: mmseg's IoUMetric with per-class IoU kept for the
run's summary and NaN for classes absent from validation.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from mmengine.logging import print_log
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

from segkit.core.metrics import iou_from_areas, mean_iou


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
