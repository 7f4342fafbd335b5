"""Training: build an mmseg config from notebook parameters and run it with mmengine's Runner.

The config is a plain mmseg/mmengine dict config with the names its users know (`model`,
`train_dataloader`, `optim_wrapper`, `param_scheduler`, `default_hooks`, ...), dumped into the
run folder beside the parameters, package versions and git commit. Data comes from COCO files
through `CocoSegDataset` (registered with mmseg's DATASETS), which reads segkit's cached label
maps, so nothing is rasterised per epoch.

Example:
    >>> from segkit.train import run
    >>> result = run(model="efficientnet_lite0", fold=0, iters=2000, crop_size=256)  # doctest: +SKIP
    >>> result.best_miou, result.best_checkpoint                                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from segkit import compat
from segkit.classes import IGNORE_INDEX, ClassTable
from segkit.coco import cached_label_maps, load_coco
from segkit.errors import ParameterError
from segkit.models import model_config, register_modules
from segkit.paths import (
    PROJECT_ROOT,
    outputs_dir,
    read_json_file,
    resolve_output_path,
    write_text_atomic,
)
from segkit.sample import resolve_data_root

LOSSES = ("ce", "focal", "dice", "ce+dice")
SCHEDULES = ("poly", "cosine")
OPTIMIZERS = ("AdamW", "SGD")
AUGMENTATIONS = ("flip", "resize_crop", "photometric")
AVERAGING = (None, "ema", "swa")


# ---------------------------------------------------------------------------------------------
# Data sources
# ---------------------------------------------------------------------------------------------

def resolve_source(source, data_root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(COCO file, folder its file_name entries are relative to) of one training source.

    A source is a path (a relative one may be relative to outputs/) or a
    dict(ann_file=..., data_root=...). Without an explicit data root,
    images resolve against the file's `"segkit": {"image_root": ...}` entry (relative to the
    file's folder, as pseudo-label files write it), else against the file's own folder (as
    copy-paste output writes it).
    """
    if isinstance(source, dict):
        ann_file = Path(source["ann_file"])
        data_root = source.get("data_root", data_root)
    else:
        ann_file = Path(source)
    ann_file = resolve_output_path(ann_file)
    if data_root:
        return ann_file, Path(data_root)
    try:
        meta = json.loads(ann_file.read_text()).get("segkit", {})
    except (OSError, ValueError):
        meta = {}  # load_coco reports the problem properly later
    root = ann_file.parent / meta["image_root"] if "image_root" in meta else ann_file.parent
    return ann_file, root


def data_list(sources, classes: ClassTable, data_root=None) -> list[dict]:
    """mmseg data infos (img_path, seg_map_path) of every image of the sources, in order.

    Images may carry their own label map as `seg_map` (relative to the COCO file's folder):
    pseudo labels do, with 255 where the model was unsure. Others use cached label maps.
    """
    infos = []
    for source in sources:
        ann_file, root = resolve_source(source, data_root)
        coco = load_coco(ann_file)
        own = all("seg_map" in img for img in coco.images) and coco.images
        labels = None if own else cached_label_maps(coco, classes)
        for img in coco.images:
            seg = ann_file.parent / img["seg_map"] if own else labels[img["id"]]
            infos.append(dict(img_path=str(root / img["file_name"]), seg_map_path=str(seg),
                              label_map=None, reduce_zero_label=False, seg_fields=[],
                              image_id=img["id"], source=str(ann_file)))
    return infos


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def register_dataset() -> None:
    """Register `CocoSegDataset`, `SegkitIoUMetric`, `RNGStateHook` and
    `GroupedOptimWrapperConstructor` with the OpenMMLab registries (idempotent)."""
    register_modules()
    from mmseg.datasets import BaseSegDataset
    from mmseg.evaluation import IoUMetric
    from mmseg.registry import DATASETS, METRICS

    if "CocoSegDataset" in DATASETS.module_dict:
        return
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

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
            import random

            import torch

            return dict(
                torch=torch.get_rng_state(), numpy=np.random.get_state(),
                python=random.getstate(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

        def before_val_epoch(self, runner):
            self._before_val = self._states()

        def after_val_epoch(self, runner, metrics=None):
            import random

            import torch

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
            import random

            if self._saved:
                np.random.set_state(self._saved["numpy"])
                random.setstate(self._saved["python"])

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            import torch

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

    @METRICS.register_module()
    class SegkitIoUMetric(IoUMetric):
        """mmseg's IoUMetric reporting fractions (0-1, as the leaderboard does) and each
        class's IoU as `IoU.<class>`; classes absent from truth and prediction are left out of
        the mean."""

        def compute_metrics(self, results: list) -> dict:
            from mmengine.logging import print_log

            inter, union, pred, label = (sum(r) for r in zip(*results))
            inter, union = np.asarray(inter, float), np.asarray(union, float)
            label = np.asarray(label, float)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.where(union > 0, inter / union, np.nan)
            out = OrderedDict(mIoU=float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
                              aAcc=float(inter.sum() / max(label.sum(), 1)))
            names = self.dataset_meta["classes"]
            for name, value in zip(names, iou):
                out[f"IoU.{name}"] = float(value)
            table = "\n".join(f"  {n:<16} {v:.4f}" for n, v in zip(names, iou))
            print_log(f"per-class IoU:\n{table}\n  mIoU {out['mIoU']:.4f}", logger="current")
            return out

    from mmengine.optim import DefaultOptimWrapperConstructor
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

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
            from mmengine.logging import MMLogger
            from torch.nn import GroupNorm, LayerNorm
            from torch.nn.modules.batchnorm import _BatchNorm
            from torch.nn.modules.instancenorm import _InstanceNorm

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
# Config
# ---------------------------------------------------------------------------------------------

def fold_files(fold: int, splits_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    folder = Path(splits_dir) if splits_dir else outputs_dir() / "splits"
    train, val = folder / f"fold{fold}_train.json", folder / f"fold{fold}_val.json"
    if not train.exists() or not val.exists():
        found = sorted(p.name for p in folder.glob("fold*_val.json")) if folder.exists() else []
        raise ParameterError(
            f"fold={fold}: {train} / {val} not found (folds there: {found or 'none'}); run "
            "02_split first, or pass train_file and val_file")
    return train, val


def balanced_class_weights(coco_file: str | os.PathLike, classes: ClassTable,
                           power: float = 0.5, clip: tuple[float, float] = (0.2, 5.0)
                           ) -> list[float]:
    """Median-frequency class weights for the loss, from a COCO file's label maps.

    A class's frequency is its pixels over all pixels of the images it appears in; its weight
    is median frequency / frequency (Eigen and Fergus, 2015), softened by `power` (0.5: the
    square root) and clipped, so thin rare classes (poles, signs) count more without the
    common ones being ignored. A class absent from the file gets 1.

    Example:
        >>> balanced_class_weights("outputs/splits/fold0_train.json", TRASH)[:3]
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


def _loss_config(loss: str, class_weights, num_classes: int) -> list[dict] | dict:
    if loss not in LOSSES:
        raise ParameterError(f"loss={loss!r}; allowed: {', '.join(LOSSES)}")
    if class_weights is not None and len(class_weights) != num_classes:
        raise ParameterError(f"class_weights has {len(class_weights)} values; "
                             f"{num_classes} classes need one each")
    weights = list(map(float, class_weights)) if class_weights is not None else None
    # avg_non_ignore: average over labelled pixels only (pseudo labels ignore many). mmseg
    # mis-indexes when it is combined with class weights, whose weighted mean already skips
    # ignored pixels, so it is only set without them.
    ce = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
              class_weight=weights, avg_non_ignore=weights is None, loss_name="loss_ce")
    # segkit's MaskedDiceLoss: mmseg's DiceLoss does not skip ignored pixels (see models.py)
    dice = dict(type="MaskedDiceLoss", loss_weight=1.0, ignore_index=IGNORE_INDEX,
                loss_name="loss_dice")
    focal = dict(type="SoftmaxFocalLoss", gamma=2.0, class_weight=weights, loss_weight=1.0,
                 loss_name="loss_focal")
    return {"ce": ce, "focal": focal, "dice": dice, "ce+dice": [ce, dice]}[loss]


def _pipelines(image_size: int, crop_size: int, augment) -> tuple[list, list]:
    unknown = set(augment) - set(AUGMENTATIONS)
    if unknown:
        raise ParameterError(f"augment has {sorted(unknown)}; allowed: {', '.join(AUGMENTATIONS)}")
    scale = (image_size, image_size)
    train = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    if "resize_crop" in augment:
        train += [dict(type="RandomResize", scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
                  dict(type="RandomCrop", crop_size=(crop_size, crop_size), cat_max_ratio=0.75)]
    else:
        train += [dict(type="Resize", scale=scale, keep_ratio=True),
                  dict(type="RandomCrop", crop_size=(crop_size, crop_size))]
    if "flip" in augment:
        train.append(dict(type="RandomFlip", prob=0.5))
    if "photometric" in augment:
        train.append(dict(type="PhotoMetricDistortion"))
    train.append(dict(type="PackSegInputs"))
    val = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=scale, keep_ratio=True),
           dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    return train, val


def _device_is_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_config(*, data_root="", fold: int | None = 0, train_file=None, val_file=None,
                 extra_train_files=(), splits_dir=None, model="efficientnet_lite0",
                 weights="auto", load_from=None, image_size=512, crop_size=512, batch_size=4,
                 iters=2000, epochs=None, optimizer="AdamW", lr=None, backbone_lr_mult=0.1,
                 weight_decay=0.01, warmup_iters=100, schedule="poly", loss="ce",
                 class_weights=None, augment=("flip", "resize_crop"), amp=False,
                 averaging=None, ema_momentum=0.001, seed=42, deterministic=False, debug=False,
                 val_interval=200, log_interval=10, num_workers=2, work_dir=None, run_name=None,
                 wandb=False, launcher="none", classes=None) -> dict:
    """The full mmseg/mmengine dict config of a training run (see `run` for the parameters)."""
    register_dataset()
    root = resolve_data_root(data_root)
    if train_file or val_file:
        if not (train_file and val_file):
            raise ParameterError("pass both train_file and val_file (or neither, and a fold)")
        train_file, val_file = Path(train_file), Path(val_file)
    elif fold is None:
        raise ParameterError("pass a fold index or train_file and val_file")
    else:
        if not data_root and splits_dir is None and \
                not (outputs_dir() / "splits" / "fold0_val.json").exists():
            # the embedded sample gets 02_split's default folds on first use, so 04_train
            # runs on its own; real data must be split explicitly (02_split)
            from segkit.split import split_file

            split_file(root / "train_all.json")
        train_file, val_file = fold_files(int(fold), splits_dir)
    for name, value, allowed in (("schedule", schedule, SCHEDULES),
                                 ("optimizer", optimizer, OPTIMIZERS),
                                 ("averaging", averaging, AVERAGING)):
        if value not in allowed:
            raise ParameterError(f"{name}={value!r}; allowed: {', '.join(map(str, allowed))}")
    if crop_size > image_size:
        raise ParameterError(f"crop_size {crop_size} is larger than image_size {image_size}")

    if classes is None:
        classes = ClassTable.for_coco(load_coco(train_file).categories)
    distributed = launcher != "none"
    model_cfg, zoo = model_config(model, classes.num_classes, weights, distributed)
    model_cfg["data_preprocessor"]["size"] = (crop_size, crop_size)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ParameterError(f"class_weights={class_weights!r}; pass 'balanced' or one "
                                 "number per class")
        class_weights = balanced_class_weights(train_file, classes)
    if "decode_head" in model_cfg and model_cfg["decode_head"].get("type") != "Mask2FormerHead":
        model_cfg["decode_head"]["loss_decode"] = _loss_config(loss, class_weights,
                                                               classes.num_classes)
    metainfo = dict(classes=list(classes.names), palette=[list(c) for c in classes.palette])

    train_pipeline, val_pipeline = _pipelines(image_size, crop_size, augment)
    subset = 8 if debug else None
    sources = [dict(ann_file=str(train_file), data_root=str(root))] + \
        [s if isinstance(s, dict) else str(s) for s in extra_train_files]
    train_dataset = dict(type="CocoSegDataset", sources=sources, metainfo=metainfo,
                         pipeline=train_pipeline, subset_size=subset)
    val_dataset = dict(type="CocoSegDataset", metainfo=metainfo, pipeline=val_pipeline,
                       sources=[dict(ann_file=str(val_file), data_root=str(root))],
                       subset_size=subset, test_mode=True)
    if debug:
        iters, val_interval, epochs = min(iters, 20), min(val_interval, 10), None
    if epochs:
        n_train = len(data_list(sources, classes))
        iters = int(epochs) * math.ceil(n_train / batch_size)
    val_interval = min(val_interval, iters)
    log_interval = max(1, min(log_interval, iters))  # even a short run logs its loss
    workers = dict(num_workers=num_workers, persistent_workers=num_workers > 0)

    if lr is None:
        lr = 6e-4 if optimizer == "AdamW" else 0.01
    # fused: one kernel per param group for the whole update (CPU and CUDA, torch >= 2.4)
    opt = (dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=True)
           if optimizer == "AdamW" else
           dict(type="SGD", lr=lr, momentum=0.9, weight_decay=weight_decay, fused=True))
    cuda = _device_is_cuda()
    wrapper = "OptimWrapper"
    if amp and not cuda and not compat.cpu_has_fast_bf16():
        warnings.warn("amp=True: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 "
                      "autocast is several times slower than fp32; training in fp32",
                      stacklevel=2)
    elif amp:
        wrapper = "AmpOptimWrapper" if cuda else "CPUBF16OptimWrapper"
    optim_wrapper = dict(type=wrapper, optimizer=opt, clip_grad=None,
                         constructor="GroupedOptimWrapperConstructor",
                         paramwise_cfg=dict(custom_keys={"backbone": dict(lr_mult=backbone_lr_mult)},
                                            norm_decay_mult=0.0))
    if wrapper == "AmpOptimWrapper":
        optim_wrapper["dtype"] = "float16"
    warmup = min(warmup_iters, max(iters - 1, 0))
    schedulers = []
    if warmup > 0:
        schedulers.append(dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0,
                               end=warmup))
    main = (dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=warmup, end=iters)
            if schedule == "poly" else
            dict(type="CosineAnnealingLR", eta_min=lr * 1e-3, by_epoch=False, begin=warmup,
                 end=iters, T_max=max(iters - warmup, 1)))
    schedulers.append(main)

    custom_hooks = [dict(type="RNGStateHook")]
    if averaging == "ema":
        custom_hooks.append(dict(type="EMAHook", ema_type="ExponentialMovingAverage",
                                 momentum=ema_momentum, update_buffers=True, priority=49))
    elif averaging == "swa":
        # weights averaged over the last quarter of training
        custom_hooks.append(dict(type="EMAHook", ema_type="StochasticWeightAverage",
                                 begin_iter=int(iters * 0.75), update_buffers=True, priority=49))
    vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
    if wandb:
        vis_backends.append(dict(type="WandbVisBackend", init_kwargs=dict(project="segkit")))

    run_name = run_name or f"{Path(model).stem}_fold{fold if fold is not None else 'x'}" + \
        ("_debug" if debug else "")
    work_dir = Path(work_dir) if work_dir else outputs_dir() / "runs" / run_name
    return dict(
        model=model_cfg,
        train_dataloader=dict(batch_size=batch_size, **workers,
                              sampler=dict(type="InfiniteSampler", shuffle=True),
                              dataset=train_dataset),
        val_dataloader=dict(batch_size=1, **workers,
                            sampler=dict(type="DefaultSampler", shuffle=False),
                            dataset=val_dataset),
        val_evaluator=dict(type="SegkitIoUMetric", iou_metrics=["mIoU"]),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=val_interval),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=optim_wrapper,
        param_scheduler=schedulers,
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=log_interval, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=val_interval,
                            save_best="mIoU", rule="greater", max_keep_ckpts=1, save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook")),
        custom_hooks=custom_hooks,
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork"),
                     dist_cfg=dict(backend="nccl" if cuda else "gloo")),
        visualizer=dict(type="SegLocalVisualizer", vis_backends=vis_backends,
                        name="visualizer"),
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        load_from=str(load_from) if load_from else zoo,
        resume=False,
        randomness=dict(seed=seed, deterministic=deterministic),
        launcher=launcher,
        work_dir=str(work_dir),
        default_scope="mmseg",
    )


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    work_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_miou: float
    per_class_iou: pd.Series
    scalars: pd.DataFrame = field(repr=False)
    seconds: float = 0.0


def environment_info() -> dict:
    """Package versions, device and git commit: what a run needs to be reproduced."""
    import importlib.metadata as md

    import torch

    versions = {}
    for dist in ("torch", "onedl-mmengine", "onedl-mmsegmentation", "onedl-mmcv",
                 "onedl-mmdetection", "numpy", "opencv-python-headless", "pycocotools", "segkit"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return dict(versions=versions, python=platform.python_version(), git_commit=commit,
                device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                mmcv_compiled_ops=compat.mmcv_has_compiled_ops())


def read_scalars(work_dir: str | os.PathLike) -> pd.DataFrame:
    """All logged scalars of a run (every resumed session), one row per logged step.

    Training rows carry `loss`, `lr`, ...; validation rows `mIoU`, `IoU.<class>`.
    """
    rows = []
    for path in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    if not rows:
        return pd.DataFrame(columns=["step"])
    df = pd.DataFrame(rows)
    if "iter" in df and "step" in df:
        df["step"] = df["step"].fillna(df["iter"])
    elif "iter" in df:
        df["step"] = df["iter"]
    df["kind"] = np.where(df.get("mIoU", pd.Series(np.nan, index=df.index)).notna(),
                          "val", "train")
    return df.drop_duplicates(subset=["kind", "step"], keep="last").sort_values(
        ["step", "kind"]).reset_index(drop=True)


def run_parameters(run_dir: str | os.PathLike) -> dict:
    """The training parameters a run folder recorded (params.json)."""
    return read_json_file(Path(run_dir) / "params.json",
                          f"{run_dir}: not a run folder (no params.json)")


def best_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    found = sorted(Path(work_dir).glob("best_mIoU_iter_*.pth"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    return found[-1] if found else None


def last_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    marker = Path(work_dir) / "last_checkpoint"
    if marker.exists():
        # mmengine writes an absolute path; the run folder may have moved since (or be
        # relative, as best_checkpoint's is), so the name is looked up in the folder itself
        path = Path(work_dir) / Path(marker.read_text().strip()).name
        if path.exists():
            return path
    found = sorted(Path(work_dir).glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def summarize(work_dir: str | os.PathLike, seconds: float | None = None) -> RunResult:
    """Best validation mIoU and per-class IoU (of the best checkpoint's validation) of a run;
    the training time comes from the run's summary.json unless given."""
    if seconds is None:
        seconds = float(_read_summary(work_dir).get("seconds", float("nan")))
    scalars = read_scalars(work_dir)
    val = scalars[scalars["kind"] == "val"] if "kind" in scalars else scalars.iloc[0:0]
    if len(val):
        best = val.loc[val["mIoU"].idxmax()]
        per_class = best[[c for c in val.columns if c.startswith("IoU.")]].astype(float)
        per_class.index = [c[4:] for c in per_class.index]
        best_miou = float(best["mIoU"])
    else:
        per_class, best_miou = pd.Series(dtype=float), float("nan")
    return RunResult(Path(work_dir), best_checkpoint(work_dir), last_checkpoint(work_dir),
                     best_miou, per_class, scalars, seconds)


def run(resume: bool = False, **params) -> RunResult:
    """Train a model and return where its checkpoints are and how well it did.

    Parameters (all optional; defaults train the CPU-sized model on the embedded sample):
        data_root        folder the COCO file names are relative to ("" = the embedded sample)
        fold             use outputs/splits/fold{fold}_{train,val}.json (from 02_split), or
        train_file, val_file   explicit COCO files
        extra_train_files  more COCO sources (copy-paste output, pseudo labels), see resolve_source
        model            a catalogue name (segkit.models.CATALOGUE) or an mmseg config .py
        weights          "auto" | "none" | "backbone" | "zoo" (see segkit.models.model_config)
        load_from        a whole-model checkpoint (path or URL) to start from
        image_size, crop_size  images are resized to image_size, then cropped to crop_size
        batch_size, iters (or epochs), val_interval, log_interval, num_workers
        optimizer        "AdamW" | "SGD"; lr, weight_decay, backbone_lr_mult (backbone lr factor)
        warmup_iters, schedule ("poly" | "cosine")
        loss             "ce" | "focal" | "dice" | "ce+dice"; class_weights (one per class, or
                         "balanced": `balanced_class_weights` of the train file)
        augment          subset of ("flip", "resize_crop", "photometric")
        amp              mixed precision: fp16 on GPU, bf16 on CPU
        averaging        None | "ema" | "swa" (mmengine's EMAHook), ema_momentum
        seed, deterministic, debug (8 images, 20 iterations), work_dir / run_name, wandb
        resume           continue a killed run from its last checkpoint
        launcher         "none", or "pytorch" under torchrun (chosen automatically)
    """
    compat.apply()
    from mmengine.config import Config
    from mmengine.runner import Runner

    if "launcher" not in params:
        params["launcher"] = "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
    cfg_dict = build_config(**params)
    work_dir = Path(cfg_dict["work_dir"])
    if not resume and last_checkpoint(work_dir) is not None:
        raise ParameterError(f"{work_dir} already holds a run: pass resume=True to continue "
                             "it, or another run_name / work_dir")
    cfg_dict["resume"] = bool(resume)
    # mmengine keeps visualizers by name for the whole process: a fresh name per run keeps a
    # second run in the same kernel (a notebook, the tests) from writing into the first's.
    cfg_dict["visualizer"]["name"] = f"segkit-{time.time_ns()}"
    work_dir.mkdir(parents=True, exist_ok=True)
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    write_text_atomic(work_dir / "params.json", json.dumps(record, indent=1, default=str))
    write_text_atomic(work_dir / "environment.json", json.dumps(environment_info(), indent=1))
    cfg = Config(cfg_dict)
    cfg.dump(str(work_dir / "config.py"))

    start = time.time()
    runner = Runner.from_cfg(cfg)
    try:
        runner.train()
    finally:
        _close_visualizer(runner)
    previous = _read_summary(work_dir).get("seconds", 0.0) if resume else 0.0
    result = summarize(work_dir, previous + time.time() - start)
    write_text_atomic(work_dir / "summary.json", json.dumps(dict(
        best_miou=result.best_miou, seconds=result.seconds,
        best_checkpoint=str(result.best_checkpoint), last_checkpoint=str(result.last_checkpoint),
        per_class_iou={k: (None if np.isnan(v) else v) for k, v in result.per_class_iou.items()},
    ), indent=1))
    return result


def _read_summary(work_dir: Path) -> dict:
    try:
        return json.loads((Path(work_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _close_visualizer(runner) -> None:
    """Flush and close the run's TensorBoard and local scalar files."""
    try:
        runner.visualizer.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass
