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


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


class _ConsoleLines(logging.Filter):
    """What a notebook (the console) shows of mmengine's log: losses, validation results,
    checkpoints, warnings. The environment, the full config and the hook table go to the run's
    log file only."""

    KEEP = ("Iter(", "Epoch(", "per-class IoU", "The best checkpoint", "Saving checkpoint",
            "Load checkpoint", "resumed", "Resum", "param groups")
    # mmengine's own deprecation notes about itself: nothing a user can act on
    NOISE = ("FileClient", "HardDiskBackend", "prefix is not set")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(n in message for n in self.NOISE):
            return False
        return record.levelno >= logging.WARNING or message.lstrip().startswith(self.KEEP)


@RUNNERS.register_module()
class SegkitRunner(Runner):
    """mmengine's Runner with a quiet, colourless console (everything still goes to the log
    file) and checkpoints written beside their final name and renamed into place, so a full
    disk or a kill mid-write never leaves a truncated `iter_N.pth` for `resume` to trip on."""

    def build_logger(self, log_level="INFO", log_file=None, **kwargs) -> MMLogger:
        logger = super().build_logger(log_level, log_file, **kwargs)
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:  # the console, not the log file
                handler.addFilter(_ConsoleLines())
                handler.setFormatter(MMFormatter(color=False, datefmt="%Y/%m/%d %H:%M:%S"))
        return logger

    def dump_config(self) -> None:
        # segkit.train.run has saved the run's config.py; mmengine would add a second copy
        # (<timestamp>.py) beside it
        if not os.path.exists(os.path.join(self.work_dir, "config.py")):
            super().dump_config()

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        partial = os.path.join(out_dir, f".{filename}.partial")
        try:
            super().save_checkpoint(out_dir, os.path.basename(partial), *args, **kwargs)
            if is_main_process():  # the only process that writes checkpoints
                os.replace(partial, os.path.join(out_dir, filename))
        finally:
            if is_main_process() and os.path.exists(partial):
                os.remove(partial)
