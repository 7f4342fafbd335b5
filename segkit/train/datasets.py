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


@DATASETS.register_module()
class CocoSegDataset(BaseSegDataset):
    """Semantic segmentation from COCO files: `sources` is a list of COCO files (or dicts
    `ann_file` / `data_root`); `metainfo` carries the class names and palette."""

    METAINFO: dict = {}

    def __init__(self, sources, data_root=None, subset_size=None, **kwargs):
        self.sources = list(sources)
        self.source_root = data_root
        self.subset_size = subset_size
        super().__init__(data_root=None, **kwargs)

    def load_data_list(self):
        meta = self._metainfo
        table = ClassTable(tuple(meta["classes"]), tuple(map(tuple, meta["palette"])))
        infos = data_list(self.sources, table, self.source_root)
        if self.subset_size:  # debug mode: a fixed, evenly spread subset
            step = max(1, len(infos) // self.subset_size)
            infos = infos[::step][: self.subset_size]
        return infos

    def prepare_data(self, idx):
        """The pipeline on one image; a transform that mixes several images (mmseg's
        RandomMosaic: `get_indices`) gets them in `mix_results`, each loaded through the
        transforms before it (what mmseg's MultiImageMixDataset wrapper does, without
        wrapping: the dataset config stays one CocoSegDataset)."""
        transforms = getattr(self.pipeline, "transforms", [])
        if not any(hasattr(t, "get_indices") for t in transforms):
            return super().prepare_data(idx)
        results = self.get_data_info(idx)
        done = []
        for transform in transforms:
            if hasattr(transform, "get_indices"):
                mixes = []
                # modulo: RandomMosaic draws randint(0, len), one past the last image
                for other in transform.get_indices(self):
                    mix = self.get_data_info(int(other) % len(self))
                    for step in done:
                        mix = step(mix)
                    mixes.append(mix)
                results["mix_results"] = mixes
            results = transform(results)
            if results is None:
                return None
            results.pop("mix_results", None)
            done.append(transform)
        return results
