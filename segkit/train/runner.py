"""The runner segkit registers with mmengine: a quiet console (environment, config and hook table
go to the run's log file).
"""

from __future__ import annotations

import logging
import os

from mmengine.dist import is_main_process
from mmengine.logging import MMLogger
from mmengine.logging.logger import MMFormatter
from mmengine.registry import (
    RUNNERS,
)
from mmengine.runner import Runner


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
        # segkit.train.training.run has saved the run's config.py; mmengine would add a second copy
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
