"""The parts segkit registers with mmseg's and mmengine's registries, on import of this module
(mmseg's own way): the COCO dataset (which also feeds RandomMosaic), the IoU metric, the
RNG-state hook, the validation-pictures hook, the grouped optimizer constructor, the one-cycle
schedule per param group, and (by importing them) segkit's backbones, losses and batch mixes.

A saved run config names this module in `custom_imports`, so mmseg's own tools load it.

Example:
    >>> import segkit.components  # doctest: +SKIP
    >>> from mmseg.registry import DATASETS; "CocoSegDataset" in DATASETS.module_dict  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import os
import random
from collections import OrderedDict

import numpy as np

from segkit import compat

compat.apply()  # before mmseg's models are imported below: the mmcv._ext stand-in

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


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Makes `resume=True` continue exactly where a killed run stopped.

    On resume mmengine re-seeds every generator and fast-forwards the sampler without
    loading the skipped batches, so the augmentations (numpy) and dropout / drop-path
    masks (torch) would differ from an uninterrupted run. Checkpoints keep the generators'
    states; numpy's and Python's are put back before the first resumed batch is loaded,
    torch's after it (creating the data loader iterator draws from torch's generator).
    Validation leaves the generators as it found them, so training draws the same
    numbers whatever the validation interval.
    """

    priority = "VERY_LOW"

    def __init__(self):
        self._saved = None
        self._before_val = None

    @staticmethod
    def _states():
        return dict(
            torch=torch.get_rng_state(), numpy=np.random.get_state(),
            python=random.getstate(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def before_val_epoch(self, runner):
        self._before_val = self._states()

    def after_val_epoch(self, runner, metrics=None):
        if self._before_val:
            torch.set_rng_state(self._before_val["torch"])
            np.random.set_state(self._before_val["numpy"])
            random.setstate(self._before_val["python"])
            self._before_val = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint["segkit_rng"] = self._before_val or self._states()

    def after_load_checkpoint(self, runner, checkpoint):
        self._saved = checkpoint.get("segkit_rng")

    def before_train(self, runner):
        if self._saved:
            np.random.set_state(self._saved["numpy"])
            random.setstate(self._saved["python"])

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self._saved:
            torch.set_rng_state(self._saved["torch"])
            if self._saved["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._saved["cuda"])
            self._saved = None


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


@PARAM_SCHEDULERS.register_module()
class GroupOneCycleLR(OneCycleLR):
    """mmengine's OneCycleLR whose peak (`eta_max`) is, when not given, each param group's own
    learning rate, so a smaller backbone lr (`lr_mult`) stays smaller all along (mmengine's
    takes one peak for every group)."""

    def __init__(self, optimizer, eta_max=None, **kwargs):
        if eta_max is None:
            eta_max = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        super().__init__(optimizer, eta_max=eta_max, **kwargs)


@HOOKS.register_module()
class SegValVisualizationHook(SegVisualizationHook):
    """mmseg's SegVisualizationHook (`draw`, `interval`) drawing the same validation images at
    every validation (every `interval`-th, from the first), logged at the training iteration,
    so an image's pictures in TensorBoard / W&B show the model learning. mmseg's picks
    different images at each validation (the index depends on the training iteration) and
    reads every image from disk even when it draws none."""

    def after_val_iter(self, runner, batch_idx: int, data_batch: dict, outputs) -> None:
        if not self.draw or batch_idx % self.interval:
            return
        import mmcv
        from mmengine.fileio import get

        for output in outputs[:1]:
            img = mmcv.imfrombytes(get(output.img_path, backend_args=self.backend_args),
                                   channel_order="rgb")
            self._visualizer.add_datasample(f"val_{os.path.basename(output.img_path)}", img,
                                            data_sample=output, show=False, step=runner.iter)


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


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GroupedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's constructor (`paramwise_cfg`: lr_mult, decay_mult, custom_keys) with the
    parameters that share options merged into one param group.

    The default constructor makes one group per parameter (177 for SegFormer-B0), so every
    optimizer step and scheduler step loops over them in Python, and a fused optimizer cannot
    fuse across groups. Merged, the same update costs a few groups: with `fused=True` the AdamW
    step of SegFormer-B0 on the CPU drops from 28 ms to 5 ms (benchmarks/README.md).

    `norm_decay_mult` applies to every normalisation layer's parameters, also those a
    `custom_keys` entry matched (mmengine applies only the first matching key, so a
    `backbone` lr_mult would otherwise leave the backbone's norms decayed).
    """

    def add_params(self, params, module, prefix="", is_dcn_module=None):
        if prefix:  # a recursive call from the default constructor
            return super().add_params(params, module, prefix, is_dcn_module)
        # mmengine logs one INFO line per parameter here (hundreds in a notebook); the
        # merged groups are summarised in one line below instead
        logger = MMLogger.get_current_instance()
        quiet = _DropRecords("paramwise_options")
        logger.addFilter(quiet)
        per_param: list[dict] = []
        try:
            super().add_params(per_param, module, prefix, is_dcn_module)
        finally:
            logger.removeFilter(quiet)
        norm_mult = self.paramwise_cfg.get("norm_decay_mult")
        if norm_mult is not None and self.base_wd is not None:
            norms = (_BatchNorm, _InstanceNorm, GroupNorm, LayerNorm)
            in_norms = {id(p) for m in module.modules() if isinstance(m, norms)
                        for p in m.parameters(recurse=False)}
            for group in per_param:
                if id(group["params"][0]) in in_norms:
                    group["weight_decay"] = self.base_wd * norm_mult
        merged: dict[tuple, dict] = {}
        for group in per_param:
            options = tuple(sorted((k, repr(v)) for k, v in group.items() if k != "params"))
            merged.setdefault(options, dict(group, params=[]))["params"] += group["params"]
        params.extend(merged.values())
        summary = "; ".join(
            f"{len(g['params'])} tensors: "
            + ", ".join(f"{k}={v:g}" for k, v in g.items() if isinstance(v, float))
            for g in merged.values())
        logger.info(f"param groups: {summary}")


# ---------------------------------------------------------------------------------------------
# The runner: a readable console, checkpoints written whole
# ---------------------------------------------------------------------------------------------

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


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook, but an old interval checkpoint is removed only once the new
    one is written: mmengine removes it first, so a failed write (a full disk) left no
    checkpoint at all to resume from."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        keep = self.max_keep_ckpts
        if keep <= 0:
            return super()._save_checkpoint_with_step(runner, step, meta)
        self.max_keep_ckpts = -1  # mmengine's removal, before the write, is skipped
        try:
            super()._save_checkpoint_with_step(runner, step, meta)
        finally:
            self.max_keep_ckpts = keep
        before = list(self.keep_ckpt_ids)
        if not before or before[-1] != step:
            self.keep_ckpt_ids.append(step)  # a bounded deque drops the oldest itself
        while len(self.keep_ckpt_ids) > keep:
            self.keep_ckpt_ids.popleft()
        for old_step in set(before) - set(self.keep_ckpt_ids):
            old = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if is_main_process() and self.file_backend.isfile(old):
                self.file_backend.remove(old)
        runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """The model in channels-last memory format (faster convolutions on tensor cores)."""

    def before_run(self, runner) -> None:
        runner.model.to(memory_format=torch.channels_last)

