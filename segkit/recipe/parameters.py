"""Every training parameter, held once: its default, what it means, and what it accepts.

`04_train`'s parameters cell, `python -m segkit train --help`, `segkit.train.training.run`, pipeline
specs and the tests all read this table. The defaults train the CPU-sized model on the embedded
sample in a few minutes; on real data and GPUs pass sizes and schedules of your own.
Values may also come as text (papermill's `-p`, the CLI's `key=value`): text is read as YAML
where a number, a boolean or a list is expected, so `-p augment "[flip]"` works.

Example:
    >>> check_training_parameters({"iters": "800", "augment": "[flip]"})["augment"]
    ['flip']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from segkit.core.errors import ParameterError
from segkit.core.options import cfg_options
from segkit.recipe.augment import check_augment
from segkit.recipe.losses import check_loss
from segkit.recipe.schedules import check_schedule

OPTIMIZERS = ("AdamW", "SGD")
AVERAGING = (None, "ema", "swa")
LOSSES = ("ce", "focal", "dice", "ce+dice")  # the first names; any sum of segkit.train.losses terms
CONFIG_MODES = ("segkit", "whole")
WEIGHTS = ("auto", "none", "backbone", "zoo")
LAUNCHERS = ("auto", "none", "pytorch", "slurm")


@dataclass(frozen=True)
class Parameter:
    """One training parameter. kind: str | path | int | float | bool | list | any; minimum
    (inclusive) for numbers; choices for a closed set (for a list: of its items); optional:
    None is accepted too."""

    name: str
    default: object
    help: str
    kind: str = "str"
    minimum: float | None = None
    choices: tuple | None = None
    optional: bool = False
    check: Callable | None = None  # returns the checked value


def check_fold(value):
    """A fold index, "all" (a full-data run: every training image) or None (with train_file).

    Example:
        >>> check_fold("all"), check_fold(2), check_fold(None)
        ('all', 2, None)
    """
    if value is None or value == "all" or (isinstance(value, int) and not isinstance(value, bool)
                                           and value >= 0):
        return value
    raise ParameterError(f"fold={value!r}: expected a fold index (0, 1, ...), all (every "
                         "training image, no validation) or None (with train_file)")


P = Parameter
TRAINING_PARAMETERS: tuple[Parameter, ...] = (
    P("data_root", "", "folder the COCO file names are relative to; '': the embedded sample",
      "path"),
    P("fold", 0, "train on outputs/splits/fold{fold}_train.json, validate on _val.json; all: "
      "every training image (train_all.json, else the folds' union), no validation",
      "any", check=check_fold),
    P("splits_dir", "", "folder of the fold files; '': outputs/splits", "path"),
    P("train_file", "", "an explicit training COCO file instead of a fold (with val_file)",
      "path"),
    P("val_file", "", "an explicit validation COCO file (with train_file)", "path"),
    P("extra_train_files", [], "more training sources: copy-paste output, pseudo labels",
      "list"),
    P("holdout_file", "", "with fold all: validate on this annotated file (relative to data_root or "
      "outputs/), whose images are left out of training; '': no validation", "path"),
    P("iters_from", [], "with fold all: iters from these CV runs' best checkpoints, scaled to the "
      "larger training set (segkit.recipe.final)", "list"),
    P("model", "efficientnet_lite0", "a catalogue name (segkit.train.models.CATALOGUE) or an mmseg "
      "config .py"),
    P("weights", "auto", "auto | none | backbone | zoo (the whole ADE20K model)",
      choices=WEIGHTS),
    P("load_from", "", "a whole-model checkpoint (path or URL) to start from", "path"),
    P("image_size", 128, "images are resized to this (keeping their aspect ratio), then",
      "int", 1),
    P("crop_size", 96, "randomly cropped to this", "int", 1),
    P("batch_size", 4, "images per iteration (per GPU under torchrun)", "int", 1),
    P("iters", 300, "training iterations", "int", 1),
    P("epochs", None, "train this many epochs instead of `iters`", "int", 1, optional=True),
    P("val_interval", 100, "validate (and keep the best checkpoint) every this many "
      "iterations", "int", 1),
    P("log_interval", 10, "log the loss every this many iterations", "int", 1),
    P("keep_checkpoints", 1, "keep the newest N interval checkpoints (checkpoint ensembles)",
      "int", 1),
    P("num_workers", 2, "data loading processes (0: in the training process)", "int", 0),
    P("cache", False, "decode the training images once, at image_size, into outputs/cache "
      "(memory-mapped; workers stop re-decoding JPEGs)", "bool"),
    P("channels_last", False, "the model in channels-last memory format (GPU tensor cores)",
      "bool"),
    P("compile", False, "torch.compile the model (pays on long GPU runs)", "bool"),
    P("optimizer", "AdamW", "AdamW | SGD", choices=OPTIMIZERS),
    P("lr", 0.002, "learning rate", "float", 0),
    P("backbone_lr_mult", 0.1, "the backbone's learning rate is lr times this", "float", 0),
    P("weight_decay", 0.01, "weight decay (not applied to normalisation layers)", "float", 0),
    P("warmup_iters", 50, "linear warm-up iterations", "int", 0),
    P("schedule", "poly", "poly | cosine | cosine_restarts | step | onecycle, after the "
      "warm-up; with options: {step: {milestones: [0.6, 0.9]}} (segkit.recipe.schedules)", "any",
      check=check_schedule),
    P("loss", "ce", "a sum of weighted terms ce, focal, dice, lovasz, ohem, smooth_ce: "
      "'ce+dice', 'ce:1.0+lovasz:0.5' (all skip ignored pixels)",
      check=check_loss),
    P("class_weights", None, "loss weight per class: one number per class, 'balanced', or "
      "None", "any"),
    P("augment", ["flip", "resize_crop"], "names, 'name:prob' or {name: {prob: p, option: "
      "value}}: flip vflip resize_crop rotate rot_flip photometric clahe cutout mosaic noise "
      "hsv ... cutmix classmix (segkit.recipe.augment)", "list", check=check_augment),
    P("amp", False, "mixed precision: fp16 on GPU, bf16 on CPUs that have it", "bool"),
    P("averaging", None, "None | ema | swa (mmengine's EMAHook)", choices=AVERAGING,
      optional=True),
    P("ema_momentum", 0.001, "EMA momentum (with averaging ema)", "float", 0),
    P("seed", 42, "random seed", "int", 0),
    P("deterministic", False, "deterministic cuDNN / torch algorithms", "bool"),
    P("debug", False, "8 images and 20 iterations: try the whole flow quickly", "bool"),
    P("run_name", "", "the run folder outputs/runs/<run_name>; '': <model>_fold<fold>"),
    P("work_dir", "", "an explicit run folder instead of outputs/runs/<run_name>", "path"),
    P("resume", False, "continue a killed run from its newest checkpoint", "bool"),
    P("wandb", False, "also log to Weights & Biases (offline without an API key or network)",
      "bool"),
    P("wandb_project", "segkit", "the W&B project"),
    P("wandb_run", "", "the W&B run name; '': the run folder's name"),
    P("vis_images", 4, "validation images drawn with their prediction at each validation "
      "(TensorBoard, W&B, vis_data/vis_image); 0: none", "int", 0),
    P("config_mode", "segkit", "segkit (a config built from these parameters) | whole (the "
      "model config file as written; segkit supplies data, classes, run folder)",
      choices=CONFIG_MODES),
    P("cfg_options", {}, "mmengine dot keys set last, e.g. {model.decode_head.dropout_ratio: "
      "0.2}", "any", check=cfg_options),
    P("launcher", "auto", "auto (torchrun / Slurm detected) | none | pytorch | slurm",
      choices=LAUNCHERS),
)
del P
BY_NAME = {p.name: p for p in TRAINING_PARAMETERS}


def defaults() -> dict:
    """{name: default} of every training parameter (lists and mappings copied)."""
    return {p.name: list(p.default) if isinstance(p.default, list) else
            dict(p.default) if isinstance(p.default, dict) else p.default
            for p in TRAINING_PARAMETERS}


def help_text() -> str:
    """One line per parameter: name, default, meaning (the CLI's `train --help`)."""
    width = max(len(p.name) for p in TRAINING_PARAMETERS)
    return "\n".join(f"  {p.name:<{width}}  {p.default!r:<26} {p.help}"
                     for p in TRAINING_PARAMETERS)


def _from_text(value, kind: str):
    if isinstance(value, str) and kind in ("int", "float", "bool", "list", "any"):
        import yaml

        try:
            return yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            return value
    return value


def _check_one(p: Parameter, value):
    value = _from_text(value, p.kind)
    if value is None and (p.optional or p.kind == "any"):
        return None
    shown = f"{p.name}={value!r}"
    if p.kind in ("str", "path") and p.choices is None:
        if not isinstance(value, str):
            value = "" if value is None else value
            if not isinstance(value, str) and not hasattr(value, "__fspath__"):
                raise ParameterError(f"{shown}: expected text ({p.help})")
        return str(value)
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise ParameterError(f"{shown}: expected true or false ({p.help})")
        return value
    if p.kind in ("int", "float"):
        number_types = (int,) if p.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types) or \
                (isinstance(value, float) and not math.isfinite(value)):
            raise ParameterError(f"{shown}: expected {'an integer' if p.kind == 'int' else 'a number'}"
                                 f" ({p.help})")
        if p.minimum is not None and value < p.minimum:
            raise ParameterError(f"{shown}: must be at least {p.minimum:g} ({p.help})")
        return float(value) if p.kind == "float" else int(value)
    if p.kind == "list":
        if isinstance(value, str):
            value = [value] if value else []
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"{shown}: expected a list, e.g. [a, b] ({p.help})")
        value = list(value)
        if p.choices is not None:
            unknown = [v for v in value if v not in p.choices]
            if unknown:
                raise ParameterError(f"{p.name} has {unknown}; allowed: "
                                     f"{', '.join(map(str, p.choices))}")
        return value
    if p.choices is not None and value not in p.choices:
        raise ParameterError(f"{shown}; allowed: {', '.join(map(str, p.choices))}")
    return value



def check_training_parameters(params: dict) -> dict:
    """Every training parameter, checked and completed with the defaults: an unknown name, a
    wrong type or a value out of range is a ParameterError naming the parameter, before any
    work starts."""
    unknown = sorted(set(params) - set(BY_NAME))
    if unknown:
        raise ParameterError(f"unknown training parameters {unknown}; allowed: "
                             f"{', '.join(BY_NAME)}")
    checked = defaults()
    for name, value in params.items():
        checked[name] = _check_one(BY_NAME[name], value)
        if BY_NAME[name].check:
            checked[name] = BY_NAME[name].check(checked[name])
    # whole mode trains the config file's own sizes and ignores both (warn_ignored names them)
    if checked["crop_size"] > checked["image_size"] and checked["config_mode"] != "whole":
        raise ParameterError(f"crop_size {checked['crop_size']} is larger than image_size "
                             f"{checked['image_size']}")
    if bool(checked["train_file"]) != bool(checked["val_file"]):
        raise ParameterError("pass both train_file and val_file (or neither, and a fold)")
    if not checked["train_file"] and checked["fold"] is None:
        raise ParameterError("pass a fold index or train_file and val_file")
    full_data = checked["fold"] == "all" and not checked["train_file"]
    for name in ("holdout_file", "iters_from"):
        if checked[name] and not full_data:
            raise ParameterError(f"{name}={checked[name]!r} is for full-data runs (fold=all, "
                                 "no train_file); a fold validates on its own val file")
    if checked["iters_from"] and checked["epochs"]:
        raise ParameterError("pass iters_from or epochs, not both")
    weights = checked["class_weights"]
    if weights is not None and weights != "balanced":
        if isinstance(weights, str) or not isinstance(weights, (list, tuple)) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                and w >= 0 for w in weights):
            raise ParameterError(f"class_weights={weights!r}; pass 'balanced' or one "
                                 "non-negative number per class")
        checked["class_weights"] = [float(w) for w in weights]
    return checked


# the annotation each kind gets in 04_train's parameters cell, as papermill --help-notebook
# reads them (its pattern takes no `|`: unions are typing's names, imported in the cell)
ANNOTATIONS = {"str": "str", "path": "str", "int": "int", "float": "float", "bool": "bool",
               "list": "list"}
ANY_ANNOTATIONS = {"fold": "Union[int, str, None]", "schedule": "Union[str, dict]",
                   "class_weights": "Union[str, list, None]", "cfg_options": "dict"}


def annotation(p: Parameter) -> str:
    """The type annotation of a parameter as 04_train's cell declares it.

    Example:
        >>> annotation(BY_NAME["epochs"]), annotation(BY_NAME["lr"])
        ('Optional[int]', 'float')
    """
    base = ANY_ANNOTATIONS.get(p.name, "object") if p.kind == "any" else ANNOTATIONS[p.kind]
    return f"Optional[{base}]" if p.optional and "None" not in base else base


def parameters_cell() -> str:
    """The text of 04_train's `parameters` cell: every parameter with its type, default and
    meaning (a test keeps the notebook's cell equal to it)."""
    import json

    lines = []
    for p in TRAINING_PARAMETERS:
        value = "None" if p.default is None else json.dumps(p.default) \
            if isinstance(p.default, (str, list)) else repr(p.default)
        declared = f"{p.name}: {annotation(p)} = {value}"
        lines.append(f"{declared:<44}# {p.help}" if len(declared) < 44 else
                     f"{declared}  # {p.help}")
    typing = sorted({name for name in ("Optional", "Union") if any(name in line for line in lines)})
    head = [f"from typing import {', '.join(typing)}  # the annotations papermill shows", ""] \
        if typing else []
    return "\n".join(head + lines)
