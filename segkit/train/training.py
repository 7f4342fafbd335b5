"""Training: build an mmseg config from training parameters and run it with mmengine's Runner.

The config is a plain mmseg/mmengine dict config with the names its users know (`model`,
`train_dataloader`, `optim_wrapper`, `param_scheduler`, `default_hooks`, ...), dumped into the
run folder beside every parameter (segkit.recipe.parameters holds them and their defaults), the
package versions and the git commit. Data comes from COCO files through `CocoSegDataset`
(segkit.train), which reads segkit's cached label maps, so nothing is rasterised per
epoch. The saved config names segkit.train in `custom_imports`, so mmseg's own tools load
it.

Example:
    from segkit.train.training import run
    result = run(model="efficientnet_lite0", fold=0, iters=2000, crop_size=256)
    result.best_miou, result.best_checkpoint
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

from segkit.coco.files import load_coco
from segkit.core.classes import ClassTable
from segkit.core.errors import ParameterError
from segkit.core.paths import (
    PROJECT_ROOT,
    make_folder,
    outputs_dir,
    resolve_output_path,
    write_text_atomic,
)
from segkit.core.trials import trial_link
from segkit.folds.full_data import full_data_sources
from segkit.recipe.augment import batch_augments, pipelines
from segkit.recipe.losses import loss_config
from segkit.recipe.parameters import TRAINING_PARAMETERS, check_training_parameters
from segkit.recipe.schedules import schedulers
from segkit.results.runs import Run, RunResult
from segkit.train import compat
from segkit.train.config_modes import apply_cfg_options, trained_settings
from segkit.train.losses import balanced_class_weights
from segkit.train.models import model_config
from segkit.train.sources import (
    check_training_data,
    data_list,
    dataset_sources,
    resize_limits,
)
from segkit.train.tracking import vis_backends, visualization_hook
from segkit.train.training_data import (
    data_record_of,
    full_data_iterations,
    training_files,
)

# ---------------------------------------------------------------------------------------------
# Config, in four parts: data, model, optimizer and schedule, runtime
# ---------------------------------------------------------------------------------------------


def _pipelines(image_size: int, crop_size: int, augment) -> tuple[list, list]:
    """(train, val) pipelines: augmentations by name (segkit.recipe.augment)."""
    return pipelines(image_size, crop_size, augment)


def _sources(p: dict, root: Path, train_file: Path, val_file: Path | None
             ) -> tuple[list, list]:
    extra = [s if isinstance(s, dict) else str(s) for s in p["extra_train_files"]]
    if p["fold"] == "all" and not p["train_file"]:  # every image, the holdout's left out
        files, holdout = full_data_sources(p["data_root"], p["splits_dir"], p["holdout_file"])
        held = {"exclude": str(holdout)} if holdout else {}
        return [dict(ann_file=str(f), data_root=str(root), **held) for f in files] + extra, \
            [dict(ann_file=str(holdout), data_root=str(root))] if holdout else []
    train = [dict(ann_file=str(train_file), data_root=str(root))] + extra
    return train, [dict(ann_file=str(val_file), data_root=str(root))]


def _data_part(p: dict, root: Path, train_file: Path, val_file: Path,
               classes: ClassTable) -> dict:
    metainfo = dict(classes=list(classes.names), palette=[list(c) for c in classes.palette])
    train_pipeline, val_pipeline = _pipelines(p["image_size"], p["crop_size"], p["augment"])
    subset = 8 if p["debug"] else None
    sources, val_sources = _sources(p, root, train_file, val_file)
    workers = dict(num_workers=p["num_workers"], persistent_workers=p["num_workers"] > 0)
    # no validation (a full-data run without a holdout): the test loader, which inference reads
    # for the validation scale and mmseg's tools for test data, goes over the training images
    val_loader = dict(
        batch_size=1, **workers, sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(type="CocoSegDataset", metainfo=metainfo, pipeline=val_pipeline,
                     sources=val_sources or sources, subset_size=subset, test_mode=True))
    evaluator = dict(type="SegkitIoUMetric", iou_metrics=["mIoU"])
    validate = bool(val_sources)
    return dict(
        train_dataloader=dict(
            batch_size=p["batch_size"], **workers,
            sampler=dict(type="InfiniteSampler", shuffle=True),
            dataset=dict(type="CocoSegDataset", sources=sources, metainfo=metainfo,
                         pipeline=train_pipeline, subset_size=subset)),
        val_dataloader=val_loader if validate else None,
        val_evaluator=evaluator if validate else None,
        # mmseg's tools/test.py and inference API read these (the validation data)
        test_dataloader=copy.deepcopy(val_loader), test_evaluator=dict(evaluator),
        test_cfg=dict(type="TestLoop"), test_pipeline=val_pipeline,
    )


def _model_part(p: dict, train_file: Path, classes: ClassTable, distributed: bool) -> dict:
    model, zoo = model_config(p["model"], classes.num_classes, p["weights"], distributed)
    model["data_preprocessor"]["size"] = (p["crop_size"], p["crop_size"])
    mixes = batch_augments(p["augment"])
    if mixes:  # CutMix / ClassMix on the padded batch (segkit.train.batch_mix)
        model["data_preprocessor"].update(type="MixSegDataPreProcessor", batch_augments=mixes)
    class_weights = p["class_weights"]
    if class_weights == "balanced":
        class_weights = balanced_class_weights(train_file, classes)
    head = model.get("decode_head") or {}
    if head.get("type") == "Mask2FormerHead":
        ignored = [f"{k}={p[k]!r}" for k in ("loss", "class_weights")
                   if p[k] != (None if k == "class_weights" else "ce")]
        if ignored:
            warnings.warn(f"{p['model']}: Mask2Former trains with its own mask, dice and class "
                          f"losses and ignores {', '.join(ignored)}; change its losses with "
                          "cfg_options, e.g. {'model.decode_head.loss_cls.loss_weight': 2.0}",
                          stacklevel=4)
    elif head:
        head["loss_decode"] = loss_config(p["loss"], class_weights, classes.num_classes)
    return dict(model=model, load_from=p["load_from"] or zoo)


def _optim_part(p: dict, iters: int, cuda: bool) -> dict:
    lr = p["lr"]
    # fused: one kernel per param group for the whole update (CPU and CUDA, torch >= 2.4)
    opt = (dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=p["weight_decay"],
                fused=True)
           if p["optimizer"] == "AdamW" else
           dict(type="SGD", lr=lr, momentum=0.9, weight_decay=p["weight_decay"], fused=True))
    wrapper = "OptimWrapper"
    if p["amp"] and not cuda and not compat.cpu_has_fast_bf16():
        warnings.warn("amp=True: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 "
                      "autocast is several times slower than fp32; training in fp32",
                      stacklevel=3)
    elif p["amp"]:
        wrapper = "AmpOptimWrapper" if cuda else "CPUBF16OptimWrapper"
    optim_wrapper = dict(type=wrapper, optimizer=opt, clip_grad=None,
                         constructor="GroupedOptimWrapperConstructor",
                         paramwise_cfg=dict(custom_keys={"backbone": dict(
                             lr_mult=p["backbone_lr_mult"])}, norm_decay_mult=0.0))
    if wrapper == "AmpOptimWrapper":
        optim_wrapper["dtype"] = "float16"
    schedule = schedulers(p["schedule"], lr, iters, p["warmup_iters"])  # segkit.recipe.schedules
    return dict(optim_wrapper=optim_wrapper, param_scheduler=schedule)


def _runtime_part(p: dict, iters: int, val_interval: int, work_dir: Path, cuda: bool) -> dict:
    custom_hooks = [dict(type="RNGStateHook")]
    link = trial_link()  # a search trial this run reports to (segkit.search, SEGKIT_TRIAL)
    if link:
        custom_hooks.append(dict(type="TrialPruningHook", **link))
    if p["averaging"] == "ema":
        custom_hooks.append(dict(type="EMAHook", ema_type="ExponentialMovingAverage",
                                 momentum=p["ema_momentum"], update_buffers=True, priority=49))
    elif p["averaging"] == "swa":
        # weights averaged over the last quarter of training
        custom_hooks.append(dict(type="EMAHook", ema_type="StochasticWeightAverage",
                                 begin_iter=int(iters * 0.75), update_buffers=True, priority=49))
    backends = vis_backends(p, work_dir.name)  # the run folder, TensorBoard, W&B (segkit.train.tracking)
    log_interval = max(1, min(p["log_interval"], iters))  # even a short run logs its loss
    return dict(
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=val_interval),
        val_cfg=dict(type="ValLoop"),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=log_interval, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="SafeCheckpointHook", by_epoch=False, interval=val_interval,
                            save_best="mIoU", rule="greater", max_keep_ckpts=p["keep_checkpoints"], save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook")),
        custom_hooks=custom_hooks,
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork"),
                     dist_cfg=dict(backend="nccl" if cuda else "gloo")),
        visualizer=dict(type="SegLocalVisualizer", vis_backends=backends,
                        name="visualizer"),
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        resume=False,
        randomness=dict(seed=p["seed"], deterministic=p["deterministic"]),
        work_dir=str(work_dir),
        default_scope="mmseg",
        # mmseg's own tools (and a fresh Python) load segkit's registered parts from here
        custom_imports=dict(imports=["segkit.train"], allow_failed_imports=False),
    )


def resolve_launcher(launcher: str) -> str:
    """"auto": "pytorch" under torchrun, "slurm" under srun with several tasks, else "none"."""
    if launcher != "auto":
        return launcher
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "pytorch"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return "slurm"
    return "none"


def default_run_name(p: dict) -> str:
    fold = p["fold"] if p["fold"] is not None and not p["train_file"] else "x"
    return f"{Path(p['model']).stem}_fold{fold}" + ("_debug" if p["debug"] else "")


def build_config(**params) -> dict:
    """The full mmseg/mmengine dict config of a training run (parameters: see
    segkit.recipe.parameters, or `python -m segkit train --help`)."""
    p = check_training_parameters(params)
    import segkit.train  # noqa: F401  (registers the dataset, metric, hooks, losses)

    root, train_file, val_file = training_files(p)
    classes = ClassTable.for_coco(load_coco(train_file).categories)
    launcher = resolve_launcher(p["launcher"])
    work_dir = resolve_output_path(p["work_dir"]) if p["work_dir"] else \
        outputs_dir() / "runs" / (p["run_name"] or default_run_name(p))
    if p["config_mode"] == "whole":
        if val_file is None:
            raise ParameterError("config_mode=whole keeps the config file's validation: a "
                                 "full-data run (fold=all) needs a holdout_file with it")
        return _whole_config(p, root, train_file, val_file, classes, work_dir, launcher)
    cuda = _device_is_cuda()
    cfg = _data_part(p, root, train_file, val_file, classes)
    iters, val_interval = p["iters"], p["val_interval"]
    if p["debug"]:
        iters, val_interval = min(iters, 20), min(val_interval, 10)
    elif p["epochs"]:
        images = len(data_list(cfg["train_dataloader"]["dataset"]["sources"], classes))
        iters = p["epochs"] * math.ceil(images / p["batch_size"])
    elif p["iters_from"]:  # a full-data run as long as its recipe's folds trained best
        iters = full_data_iterations(p).iters
    val_interval = min(val_interval, iters)
    cfg.update(_model_part(p, train_file, classes, launcher != "none"))
    cfg.update(_optim_part(p, iters, cuda))
    cfg.update(_runtime_part(p, iters, val_interval, work_dir, cuda))
    cfg["launcher"] = launcher
    val_images = len(load_coco(val_file).images) if val_file else 0
    if val_file is None:  # a full-data run without a holdout: no validation, no best
        cfg.update(val_cfg=None)
        cfg["default_hooks"]["checkpoint"]["save_best"] = None
    cfg["default_hooks"]["visualization"] = visualization_hook(
        p["vis_images"], min(val_images, 8) if p["debug"] else val_images)
    _speed_options(cfg, p, classes, cuda)
    return apply_cfg_options(cfg, p["cfg_options"])  # the escape hatch, last


def _whole_config(p: dict, root: Path, train_file: Path, val_file: Path, classes: ClassTable,
                  work_dir: Path, launcher: str) -> dict:
    """config_mode="whole": the model's config file as written, on this run's data, classes
    and run folder (segkit.train.config_modes), then cfg_options."""
    from segkit.train.config_modes import whole_config
    from segkit.train.models import config_file_of

    train_sources, val_sources = _sources(p, root, train_file, val_file)
    cfg = whole_config(p, config_file_of(p["model"]), train_sources, val_sources, classes,
                       work_dir, launcher)
    return apply_cfg_options(cfg, p["cfg_options"])


def _speed_options(cfg: dict, p: dict, classes: ClassTable, cuda: bool) -> None:
    """The data and device levers: the decoded-image cache, pinned memory, cuDNN's autotuner,
    channels-last, torch.compile, and DDP on CPU processes."""
    train = cfg["train_dataloader"]
    if p["cache"]:
        from segkit.train.data_cache import build_cache, cached_pipeline

        infos = data_list(train["dataset"]["sources"], classes)
        train["dataset"]["pipeline"] = cached_pipeline(train["dataset"]["pipeline"],
                                                       build_cache(infos, p["image_size"]))
    for loader in (train, cfg["val_dataloader"] or {}):
        loader["pin_memory"] = cuda
    if cfg.get("launcher", "none") != "none" and not cuda:
        # CPU processes over gloo: DDP without device ids (mmengine passes the local rank's)
        cfg["model_wrapper_cfg"] = dict(type="MMDistributedDataParallel", device_ids=None,
                                        broadcast_buffers=False)
    cfg["env_cfg"]["cudnn_benchmark"] = cuda and not p["deterministic"]
    if p["channels_last"]:
        cfg["custom_hooks"].append(dict(type="ChannelsLastHook"))
    if p["compile"]:
        cfg["compile"] = True


def _device_is_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

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


def run(**params) -> RunResult:
    """Train a model and return where its checkpoints are and how well it did.

    Parameters: every name of segkit.recipe.parameters.TRAINING_PARAMETERS (all optional; the
    defaults train the CPU-sized model on the embedded sample), listed with their defaults by
    `python -m segkit train --help`. `resume=True` continues a killed run from its newest
    checkpoint; without it an existing run folder is refused, never overwritten.
    """
    params = check_training_parameters(params)
    cfg_dict = build_config(**params)
    from mmengine.config import Config

    from segkit.train.runner import SegkitRunner

    run_dir = Run(cfg_dict["work_dir"])
    if not params["resume"] and run_dir.last_checkpoint is not None:
        raise ParameterError(
            f"{run_dir.path} already holds a run: continue it with resume=True (papermill: "
            "-p resume True; CLI: resume=true), or train into another run_name (papermill: "
            "-p run_name NAME; CLI: run_name=NAME)")
    val_dataset = (cfg_dict.get("val_dataloader") or {}).get("dataset") or {}
    check_training_data(dataset_sources(cfg_dict["train_dataloader"]["dataset"]),
                        dataset_sources(val_dataset),
                        train_resize=resize_limits(cfg_dict["train_dataloader"]["dataset"]),
                        val_resize=resize_limits(val_dataset))
    final = full_data_iterations(params)
    if final is not None:
        print(final.rule)
    if params["resume"]:
        _resume_from(run_dir, cfg_dict)
    # mmengine keeps visualizers by name for the whole process: a fresh name per run keeps a
    # second run in the same kernel (a notebook, the tests) from writing into the first's.
    cfg_dict["visualizer"]["name"] = f"segkit-{time.time_ns()}"
    make_folder(run_dir.path)  # a read-only outputs folder: one line naming it
    # the files it trains and validates on (data.json); resuming on changed files is refused
    run_dir.record_data(data_record_of(params), continuing=bool(cfg_dict.get("resume")))
    write_text_atomic(run_dir.path / "params.json", json.dumps(params, indent=1, default=str))
    write_text_atomic(run_dir.path / "environment.json",
                      json.dumps(environment_info(), indent=1))
    Config(cfg_dict).dump(str(run_dir.path / "config.py"))

    start = time.time()
    runner = SegkitRunner.from_cfg(Config(cfg_dict))
    try:
        runner.train()
    finally:
        _close_visualizer(runner)
    previous = run_dir.recorded_summary().get("seconds", 0.0) if params["resume"] else 0.0
    result = run_dir.summary(previous + time.time() - start)
    write_text_atomic(run_dir.path / "summary.json", json.dumps(dict(
        best_miou=result.best_miou, seconds=result.seconds,
        best_checkpoint=str(result.best_checkpoint), last_checkpoint=str(result.last_checkpoint),
        per_class_iou={k: (None if np.isnan(v) else v) for k, v in result.per_class_iou.items()},
        trained=trained_settings(cfg_dict),  # what the config trained (whole mode: not params)
    ), indent=1))
    return result


def _resume_from(run_dir: Run, cfg_dict: dict) -> None:
    """Point the config at the newest checkpoint that reads back whole, and say which."""
    path, broken = run_dir.resume_point()
    for bad in broken:
        print(f"resume: skipping {bad.name}, which does not read back (a write cut short)")
    if path is None:
        print(f"resume: no checkpoint in {run_dir.path} to continue from; training from the "
              "start")
        return
    print(f"resume: continuing from {path.name}")
    cfg_dict.update(resume=True, load_from=str(path))


def parameters_from(namespace: dict) -> dict:
    """The training parameters a notebook's parameters cell set (its globals()): 04_train
    passes them all to `run` in one call."""
    return {p.name: namespace[p.name] for p in TRAINING_PARAMETERS if p.name in namespace}


def _close_visualizer(runner) -> None:
    """Flush and close the run's TensorBoard and local scalar files."""
    try:
        runner.visualizer.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass
