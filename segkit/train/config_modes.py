"""The escape hatches of a training config: `cfg_options` (mmengine's `--cfg-options` dot keys,
applied last) and `config_mode="whole"` (an mmseg config file trained as written, segkit only
supplying the data, the classes and the run folder).

In whole mode the config's datasets become segkit's CocoSegDataset on the run's COCO files
(the config's own pipelines kept; `reduce_zero_label`, an ADE20K convention, is turned off
since segkit's label maps keep class 0), every head gets the classes' number, IoUMetric
becomes SegkitIoUMetric (fractions, `IoU.<class>`: the run folder reads like any other),
SyncBN becomes BN outside distributed runs, and `work_dir`, `launcher` and `custom_imports`
are set. Everything else (model, schedule, optimizer, hooks, iterations) is the file's.

Example:
    cfg = apply_cfg_options(cfg, {"model.decode_head.dropout_ratio": 0.2})
"""

from __future__ import annotations

import warnings
from pathlib import Path

from segkit.core.errors import ParameterError
from segkit.core.options import cfg_options as parse_cfg_options

# the parameters whole mode reads; any other one set away from its default is ignored (and
# a warning names it)
WHOLE_MODE_PARAMETERS = {"data_root", "fold", "splits_dir", "train_file", "val_file",
                         "extra_train_files", "model", "load_from", "run_name", "work_dir",
                         "resume", "launcher", "cfg_options", "config_mode", "weights"}


def _child(node, part: str, key: str):
    if isinstance(node, dict):
        if part not in node:
            raise ParameterError(
                f"cfg_options key {key!r}: the config has no {part!r} there (it has: "
                f"{', '.join(map(str, node))}); to add a new section give a mapping as the "
                "value of its parent's key")
        return node[part]
    if isinstance(node, (list, tuple)) and part.lstrip("-").isdigit() and \
            -len(node) <= int(part) < len(node):
        return node[int(part)]
    raise ParameterError(f"cfg_options key {key!r}: {part!r} does not index "
                         f"{type(node).__name__} of {len(node) if hasattr(node, '__len__') else 0}"
                         " entries")


def apply_cfg_options(cfg: dict, options) -> dict:
    """`cfg` with mmengine dot keys set (Config.merge_from_dict, list indices allowed). The
    parent of every key must exist, so a misspelt key fails instead of adding a section."""
    options = parse_cfg_options(options)
    if not options:
        return cfg
    from mmengine.config import Config

    for key in options:
        node = cfg
        for part in key.split(".")[:-1]:
            node = _child(node, part, key)
        if not isinstance(node, (dict, list, tuple)):
            raise ParameterError(f"cfg_options key {key!r}: its parent is a "
                                 f"{type(node).__name__}, not a section")
    merged = Config(cfg)
    merged.merge_from_dict(options, allow_list_keys=True)
    return {k: merged[k] for k in merged.keys()}


def warn_ignored(p: dict) -> None:
    """A warning naming every parameter set away from its default that whole mode ignores."""
    from segkit.recipe.parameters import defaults

    default = defaults()
    ignored = sorted(k for k, v in p.items()
                     if k not in WHOLE_MODE_PARAMETERS and v != default.get(k))
    if ignored:
        warnings.warn(f"config_mode='whole' trains {p['model']} as written and ignores "
                      f"{ignored}; set them in the config file or with cfg_options",
                      stacklevel=4)


def _dataset(node: dict, sources: list, metainfo: dict, test_mode: bool) -> dict:
    """The config's dataset with its innermost datasets replaced by CocoSegDataset (wrappers
    such as RepeatDataset or MultiImageMixDataset kept)."""
    node = dict(node)
    if "datasets" in node:
        node["datasets"] = [_dataset(d, sources, metainfo, test_mode) for d in node["datasets"]]
        return node
    if "dataset" in node:
        node["dataset"] = _dataset(node["dataset"], sources, metainfo, test_mode)
        return node
    pipeline = [dict(t, reduce_zero_label=False) if t.get("type") == "LoadAnnotations" else t
                for t in node.get("pipeline", [])]
    return dict(type="CocoSegDataset", sources=sources, metainfo=metainfo, pipeline=pipeline,
                test_mode=test_mode)


def whole_config(p: dict, config_file: Path, train_sources: list, val_sources: list,
                 classes, work_dir: Path, launcher: str) -> dict:
    """An mmseg config file as written, on the run's data, classes and run folder."""
    from segkit.train import compat
    from segkit.train.models import (
        _read_config,
        _set_num_classes,
        _strip_backbone_init,
        zoo_weights,
    )

    warn_ignored(p)
    cfg = _read_config(config_file).to_dict()
    metainfo = dict(classes=list(classes.names), palette=[list(c) for c in classes.palette])
    for loader, sources, test_mode in (("train_dataloader", train_sources, False),
                                       ("val_dataloader", val_sources, True),
                                       ("test_dataloader", val_sources, True)):
        if cfg.get(loader):
            cfg[loader]["dataset"] = _dataset(cfg[loader]["dataset"], sources, metainfo,
                                              test_mode)
    model = cfg["model"]
    _set_num_classes(model, classes.num_classes)
    if p["weights"] == "none":
        _strip_backbone_init(model)
    if not compat.keep_sync_bn(launcher != "none"):
        model = compat.sync_bn_to_bn(model)
    cfg["model"] = model
    for key in ("val_evaluator", "test_evaluator"):
        if isinstance(cfg.get(key), dict) and cfg[key].get("type") == "IoUMetric":
            cfg[key] = dict(cfg[key], type="SegkitIoUMetric")
    if p["load_from"]:
        cfg["load_from"] = p["load_from"]
    elif p["weights"] == "zoo":
        cfg["load_from"] = zoo_weights(config_file, None)
    imports = (cfg.get("custom_imports") or {}).get("imports", [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    cfg["custom_imports"] = dict(imports=list(dict.fromkeys([*imports, "segkit.train"])),
                                 allow_failed_imports=False)
    cfg.setdefault("visualizer", dict(type="SegLocalVisualizer", name="visualizer",
                                      vis_backends=[dict(type="LocalVisBackend")]))
    cfg.setdefault("default_scope", "mmseg")
    cfg["work_dir"] = str(work_dir)
    cfg["launcher"] = launcher
    return cfg


def _pipeline_value(pipeline, types: tuple[str, ...], key: str):
    for step in pipeline or []:
        if isinstance(step, dict) and step.get("type") in types and step.get(key) is not None:
            return step[key]
    return None


def _inner_dataset(node: dict) -> dict:
    while isinstance(node, dict) and ("dataset" in node or "datasets" in node):
        node = node["dataset"] if "dataset" in node else (node["datasets"] or [{}])[0]
    return node if isinstance(node, dict) else {}


def _plain(value):
    """Tuples as lists, so the record reads the same from JSON."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def trained_settings(cfg: dict) -> dict:
    """What a training config really trains, read from the config itself (not segkit's
    parameters, which whole mode ignores): iterations (or epochs), image scale and crop of the
    training pipeline, batch size, optimizer and lr, and the lr schedule. summary.json records
    it (`trained`), 08's table shows it.

    Example:
        >>> trained_settings({"train_cfg": {"type": "IterBasedTrainLoop", "max_iters": 2},
        ...     "train_dataloader": {"batch_size": 2, "dataset": {"pipeline": [
        ...         {"type": "RandomCrop", "crop_size": (512, 512)}]}},
        ...     "optim_wrapper": {"optimizer": {"type": "AdamW", "lr": 6e-05}},
        ...     "param_scheduler": [{"type": "PolyLR", "begin": 0, "end": 2}]})
        {'iters': 2, 'crop_size': [512, 512], 'batch_size': 2, 'optimizer': 'AdamW', 'lr': 6e-05, 'schedule': 'PolyLR 0-2'}
    """
    out: dict = {}
    loop = cfg.get("train_cfg") or {}
    if loop.get("max_iters") is not None:
        out["iters"] = int(loop["max_iters"])
    elif loop.get("max_epochs") is not None:
        out["epochs"] = int(loop["max_epochs"])
    loader = cfg.get("train_dataloader") or {}
    pipeline = _inner_dataset(loader.get("dataset") or {}).get("pipeline")
    scale = _pipeline_value(pipeline, ("Resize", "RandomResize", "FastResize"), "scale")
    if scale is not None:
        out["image_size"] = _plain(scale)
    crop = _pipeline_value(pipeline, ("RandomCrop", "FastRandomCrop"), "crop_size")
    if crop is None:
        crop = ((cfg.get("model") or {}).get("data_preprocessor") or {}).get("size")
    if crop is not None:
        out["crop_size"] = _plain(crop)
    if loader.get("batch_size") is not None:
        out["batch_size"] = int(loader["batch_size"])
    optimizer = (cfg.get("optim_wrapper") or {}).get("optimizer") or {}
    if optimizer.get("type"):
        out["optimizer"] = str(optimizer["type"])
    if optimizer.get("lr") is not None:
        out["lr"] = float(optimizer["lr"])
    schedulers = cfg.get("param_scheduler") or []
    schedulers = [schedulers] if isinstance(schedulers, dict) else schedulers
    parts = []
    for s in schedulers:
        span = f" {s.get('begin', 0)}-{s['end']}" if s.get("end") is not None else ""
        parts.append(f"{s.get('type', '?')}{span}")
    if parts:
        out["schedule"] = " + ".join(parts)
    return out
