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
