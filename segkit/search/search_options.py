"""A spec's `search:` section checked and read: trials, folds, objective, pruner, sampler,
space and storage (segkit.search.study runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segkit.core.errors import ParameterError
from segkit.core.paths import outputs_dir
from segkit.recipe.parameters import BY_NAME
from segkit.search.space import Dimension, parse_space, searched_names

SEARCH_KEYS = ("space", "n_trials", "folds", "objective", "trial", "pruner", "sampler",
               "timeout", "step")
OBJECTIVES = ("val_miou", "oof_miou")
PRUNERS = {"hyperband": ("min_resource", "max_resource", "reduction_factor"),
           "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
           "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
           "none": ()}
SAMPLERS = {"tpe": ("seed", "n_startup_trials", "multivariate"), "random": ("seed",)}


@dataclass
class SearchOptions:
    """A spec's `search:` section, checked (see the module docstring)."""

    space: list[Dimension]
    n_trials: int = 10
    folds: list | None = None
    objective: str = "val_miou"
    trial: dict = field(default_factory=dict)
    pruner: dict = field(default_factory=lambda: {"type": "hyperband"})
    sampler: dict = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    timeout: float | None = None
    step: int | None = None


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _typed(spec, kinds: dict, where: str, what: str) -> dict:
    spec = {"type": spec} if isinstance(spec, str) else dict(spec or {})
    kind = spec.setdefault("type", next(iter(kinds)))
    if kind not in kinds:
        raise ParameterError(f"{where}: search {what} {kind!r}; allowed: {', '.join(kinds)}")
    unknown = sorted(set(spec) - {"type", *kinds[kind]})
    if unknown:
        raise ParameterError(f"{where}: search {what} {kind} takes "
                             f"{', '.join(kinds[kind]) or 'no options'}, not {unknown}")
    return spec


def parse_search(section, where: str, base: dict | None = None) -> SearchOptions:
    """The `search:` section of a spec, checked against the training parameters (`base`: the
    trials' other parameters). A ParameterError names the spec and the entry."""
    if not isinstance(section, dict):
        raise ParameterError(f"{where}: 'search' must be a mapping with a 'space'")
    unknown = sorted(set(section) - set(SEARCH_KEYS))
    if unknown:
        raise ParameterError(f"{where}: unknown search keys {unknown}; allowed: "
                             f"{', '.join(SEARCH_KEYS)}")
    trial = section.get("trial") or {}
    if not isinstance(trial, dict) or set(trial) - set(BY_NAME):
        raise ParameterError(f"{where}: search trial must map training parameters to values, "
                             f"got {trial!r}")
    base = {**(base or {}), **trial}
    space = parse_space(section.get("space"), where, base)
    both = sorted(searched_names(space) & set(trial))
    if both:
        raise ParameterError(f"{where}: {both} both searched and fixed in search trial")
    folds = section.get("folds")
    if folds is not None and (not isinstance(folds, list) or not folds or not all(
            isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in folds)
            or len(set(folds)) < len(folds)):
        raise ParameterError(f"{where}: search folds must be a list of distinct fold indices, "
                             f"got {folds!r}")
    objective = section.get("objective", "val_miou")
    if objective not in OBJECTIVES:
        raise ParameterError(f"{where}: search objective {objective!r}; allowed: "
                             f"{', '.join(OBJECTIVES)}")
    if objective == "oof_miou" and (folds is None or len(folds) < 2):
        raise ParameterError(f"{where}: objective oof_miou needs two or more search folds")
    timeout = section.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(
            timeout, (int, float)) or timeout <= 0):
        raise ParameterError(f"{where}: search timeout is in minutes, got {timeout!r}")
    step = section.get("step")
    return SearchOptions(
        space=space, n_trials=_positive_int(section.get("n_trials", 10), f"{where}: n_trials"),
        folds=folds, objective=objective, trial=dict(trial),
        pruner=_typed(section.get("pruner", "hyperband"), PRUNERS, where, "pruner"),
        sampler=_typed(section.get("sampler", "tpe"), SAMPLERS, where, "sampler"),
        timeout=timeout, step=None if step is None else _positive_int(step, f"{where}: step"))


def default_storage(name: str) -> Path:
    """The journal file of a study: outputs/search/<name>/journal.log."""
    return outputs_dir() / "search" / name / "journal.log"
