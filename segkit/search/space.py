"""A search space as a spec's `search: space:` declares it: distributions over 04_train
parameters (segkit.recipe.parameters), each checked against the training parameters before any
trial runs.

    space:
      lr: {log_uniform: [0.0005, 0.01]}          # float on a log scale
      weight_decay: {uniform: [0.0, 0.05]}       # float (optional step: 0.01)
      iters: {int: [200, 800], step: 200}        # integer (optional step, log: true)
      loss: {choice: [ce, "ce+dice", focal]}     # one of the values
      augment:                                   # values that are lists or mappings: named
        choice: {base: [flip, resize_crop], colour: [flip, resize_crop, photometric]}
      sizes:                                     # a bundle: one choice sets several parameters
        choice: {s: {image_size: 96, crop_size: 64}, m: {image_size: 128, crop_size: 96}}

A choice of lists or mappings without names is named after its values (`flip+resize_crop`).
Optuna sees the names (its categorical values must be plain); `suggest` returns the training
values. No Optuna is needed to read and check a space, only to sample one (on a trial).

Example:
    dims = parse_space({"lr": {"log_uniform": [1e-4, 1e-2]}}, "search.yaml")
    values = suggest(trial, dims)   # {"lr": 0.0031...}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from segkit.core.errors import ParameterError
from segkit.recipe.parameters import BY_NAME, check_training_parameters

KINDS = ("log_uniform", "uniform", "int", "choice")


@dataclass(frozen=True)
class Dimension:
    """One searched name: a training parameter, or a bundle (a choice whose options each set
    several parameters). kind: one of KINDS; low / high / step / log for numbers; options:
    {label: value} for a choice."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    options: tuple = ()  # ((label, value), ...)
    bundle: bool = False

    @property
    def labels(self) -> list:
        return [label for label, _ in self.options]

    def value(self, sampled):
        """The training value (a bundle: {parameter: value}) of what Optuna sampled."""
        if self.kind != "choice":
            return sampled
        for label, value in self.options:
            if label == sampled:
                return value
        raise ParameterError(f"search space {self.name}: {sampled!r} is none of "
                             f"{self.labels}")

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}: one of {', '.join(map(str, self.labels))}"
        scale = " (log scale)" if self.log else ""
        step = f", step {self.step:g}" if self.step else ""
        return f"{self.name}: {self.kind} {self.low:g} .. {self.high:g}{step}{scale}"


def label_of(value) -> str | int | float | bool | None:
    """A plain name for a choice's value: plain values stay, a list of names is joined with
    '+', anything else is written as compact JSON."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "+".join(value) if value else "none"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParameterError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _dimension(name: str, entry, where: str) -> Dimension:
    where = f"{where}: search space {name}"
    if not isinstance(entry, dict):
        raise ParameterError(f"{where}: expected a mapping like {{log_uniform: [0.0001, 0.01]}}"
                             f" or {{choice: [a, b]}}, got {entry!r}")
    kinds = [k for k in entry if k in KINDS]
    extra = sorted(set(entry) - set(KINDS) - {"step", "log"})
    if len(kinds) != 1 or extra:
        raise ParameterError(f"{where}: give exactly one of {', '.join(KINDS)} (and step / log "
                             f"for numbers), got {sorted(entry)}")
    kind = kinds[0]
    if kind == "choice":
        raw = entry["choice"]
        if isinstance(raw, dict):
            options = tuple((str(k), v) for k, v in raw.items())
        elif isinstance(raw, list):
            options = tuple((label_of(v), v) for v in raw)
        else:
            raise ParameterError(f"{where}: choice takes a list of values or a mapping of "
                                 "names to values")
        labels = [label for label, _ in options]
        if not options or len(set(map(str, labels))) < len(labels):
            raise ParameterError(f"{where}: choice needs distinct options, got {labels}")
        bundle = name not in BY_NAME
        if bundle:
            for label, value in options:
                if not isinstance(value, dict) or not value or set(value) - set(BY_NAME):
                    raise ParameterError(
                        f"{where}: {name!r} is not a training parameter, so each option must "
                        f"be a mapping of training parameters (a bundle), e.g. {{image_size: "
                        f"128, crop_size: 96}}; option {label!r} is {value!r}")
        return Dimension(name, kind, options=options, bundle=bundle)
    if name not in BY_NAME:
        raise ParameterError(f"{where}: not a training parameter (segkit train --help lists "
                             "them)")
    bounds = entry[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ParameterError(f"{where}: {kind} takes [low, high], got {bounds!r}")
    low, high = (_number(b, where) for b in bounds)
    log = kind == "log_uniform" or bool(entry.get("log", False))
    step = _number(entry["step"], where) if entry.get("step") is not None else None
    if not low < high or (log and low <= 0) or (step is not None and step <= 0):
        raise ParameterError(f"{where}: needs low < high (and low > 0 on a log scale, step > "
                             f"0), got {bounds}")
    if kind == "int" and not (low.is_integer() and high.is_integer()
                              and (step is None or step.is_integer())):
        raise ParameterError(f"{where}: int takes whole numbers, got {bounds}")
    if log and step is not None:
        raise ParameterError(f"{where}: a log scale takes no step")
    return Dimension(name, kind, low, high, step, log)


def parse_space(space, where: str, base: dict | None = None) -> list[Dimension]:
    """The dimensions of a `space:` mapping, checked: every name a training parameter (or a
    bundle of them), every option and both ends of every range accepted by the training
    parameters on top of `base` (the trial's other parameters), no parameter searched twice.
    A ParameterError names the spec (`where`) and the entry."""
    if not isinstance(space, dict) or not space:
        raise ParameterError(f"{where}: search needs a non-empty 'space' mapping of training "
                             "parameters to distributions, e.g. lr: {log_uniform: [0.0005, "
                             "0.01]}")
    dims = [_dimension(str(name), entry, where) for name, entry in space.items()]
    owner: dict = {}
    for dim in dims:
        names = {k for _, v in dim.options for k in v} if dim.bundle else {dim.name}
        for name in names:
            if name in owner:
                raise ParameterError(f"{where}: {name} is searched twice (in {owner[name]} and "
                                     f"{dim.name})")
            owner[name] = dim.name
    base = dict(base or {})
    for dim in dims:
        if dim.kind == "choice":
            tries = [(label, v if dim.bundle else {dim.name: v}) for label, v in dim.options]
        else:
            ends = (int(dim.low), int(dim.high)) if dim.kind == "int" else (dim.low, dim.high)
            tries = [(e, {dim.name: e}) for e in ends]
        for label, values in tries:
            try:
                check_training_parameters(_without_size_rule({**base, **values}))
            except ParameterError as exc:
                raise ParameterError(f"{where}: search space {dim.name}, {label!r}: "
                                     f"{exc}") from None
    return dims


def _without_size_rule(params: dict) -> dict:
    """crop_size > image_size is a combination's fault, not one value's: checked per trial."""
    if "crop_size" in params and "image_size" in params:
        params = dict(params)
        params["crop_size"] = min(params["crop_size"], params["image_size"]) \
            if all(isinstance(params[k], int) for k in ("crop_size", "image_size")) \
            else params["crop_size"]
    return params


def suggest(trial, dims: list[Dimension]) -> dict:
    """Sample every dimension on an Optuna trial; returns the training values (bundles
    spread into their parameters)."""
    values: dict = {}
    for dim in dims:
        if dim.kind == "choice":
            sampled = trial.suggest_categorical(dim.name, dim.labels)
        elif dim.kind == "int":
            sampled = trial.suggest_int(dim.name, int(dim.low), int(dim.high),
                                        step=int(dim.step or 1), log=dim.log)
        else:
            sampled = trial.suggest_float(dim.name, dim.low, dim.high, step=dim.step,
                                          log=dim.log)
        value = dim.value(sampled)
        values.update(value if dim.bundle else {dim.name: value})
    return values


def values_of(params: dict, dims: list[Dimension]) -> dict:
    """The training values of a trial's sampled `params` (Optuna's trial.params)."""
    values: dict = {}
    for dim in dims:
        if dim.name in params:
            value = dim.value(params[dim.name])
            values.update(value if dim.bundle else {dim.name: value})
    return values


def searched_names(dims: list[Dimension]) -> set:
    """The training parameters a space sets."""
    return {k for d in dims for k in ({k for _, v in d.options for k in v} if d.bundle
                                       else {d.name})}
