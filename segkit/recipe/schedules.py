"""Learning-rate schedules by name, each after a linear warm-up: mmengine's schedulers
(`param_scheduler`), with the users' names.

`schedule` is a name or `{name: {option: value}}`:

| name | mmengine scheduler | options (defaults) |
|---|---|---|
| poly | PolyLR | power (1.0), eta_min (0) |
| cosine | CosineAnnealingLR | eta_min_ratio (1e-3: of lr) |
| cosine_restarts | CosineRestartLR | cycles (4, equal length), restart_weight (1.0: each restart's peak relative to the previous), eta_min_ratio (1e-3) |
| step | MultiStepLR | milestones ([0.67, 0.89]: fractions of the iterations after the warm-up), gamma (0.1) |
| onecycle | GroupOneCycleLR (mmengine's OneCycleLR, each param group peaking at its own lr) | div_factor (25), final_div_factor (1e4), anneal_strategy (cos); its rising phase is the warm-up (`warmup_iters`) |

Example:
    >>> [s["type"] for s in schedulers("step", lr=0.01, iters=100, warmup=10)]
    ['LinearLR', 'MultiStepLR']
"""

from __future__ import annotations

from segkit.core.errors import ParameterError
from segkit.core.options import named_item

SCHEDULE_OPTIONS = {
    "poly": {"power": 1.0, "eta_min": 0.0},
    "cosine": {"eta_min_ratio": 1e-3},
    "cosine_restarts": {"cycles": 4, "restart_weight": 1.0, "eta_min_ratio": 1e-3},
    "step": {"milestones": [0.67, 0.89], "gamma": 0.1},
    "onecycle": {"div_factor": 25.0, "final_div_factor": 1e4, "anneal_strategy": "cos"},
}
SCHEDULES = tuple(SCHEDULE_OPTIONS)


def schedule_spec(value) -> tuple[str, dict]:
    """(name, options with their defaults) of a `schedule` value."""
    name, number, options = named_item("schedule", value, number_key="")
    if name not in SCHEDULE_OPTIONS:
        raise ParameterError(f"schedule={name!r}; allowed: {', '.join(SCHEDULES)}")
    if number is not None:
        raise ParameterError(f"schedule={value!r}: give options as {{{name}: {{option: value}}}}")
    unknown = sorted(set(options) - set(SCHEDULE_OPTIONS[name]))
    if unknown:
        raise ParameterError(f"schedule {name}: unknown options {unknown}; allowed: "
                             f"{', '.join(SCHEDULE_OPTIONS[name])}")
    options = {**SCHEDULE_OPTIONS[name], **options}
    if name == "step":
        ms = options["milestones"]
        if not isinstance(ms, (list, tuple)) or not ms or not all(
                isinstance(m, (int, float)) and 0 < m < 1 for m in ms) or list(ms) != sorted(ms):
            raise ParameterError(f"schedule step: milestones={ms!r}; expected increasing "
                                 "fractions of the training between 0 and 1, e.g. [0.6, 0.9]")
    if name == "cosine_restarts" and (not isinstance(options["cycles"], int)
                                      or options["cycles"] < 1):
        raise ParameterError(f"schedule cosine_restarts: cycles={options['cycles']!r}; "
                             "expected a whole number of at least 1")
    return name, options


def check_schedule(value):
    """The `schedule` value, checked (the name and its options)."""
    schedule_spec(value)
    return value


def _after_warmup(name: str, o: dict, lr: float, begin: int, iters: int) -> dict:
    span = max(iters - begin, 1)
    common = dict(by_epoch=False, begin=begin, end=iters)
    if name == "poly":
        return dict(type="PolyLR", eta_min=o["eta_min"], power=o["power"], **common)
    if name == "cosine":
        # absolute eta_min, as segkit's cosine always had (identical configs for old runs)
        return dict(type="CosineAnnealingLR", eta_min=lr * o["eta_min_ratio"], T_max=span,
                    **common)
    if name == "cosine_restarts":
        cycles = min(o["cycles"], span)
        periods = [span // cycles + (1 if i < span % cycles else 0) for i in range(cycles)]
        return dict(type="CosineRestartLR", periods=periods,
                    restart_weights=[o["restart_weight"] ** i for i in range(cycles)],
                    eta_min_ratio=o["eta_min_ratio"], **common)
    # step: milestones counted from the scheduler's begin
    milestones = sorted({max(1, min(span - 1, round(m * span))) for m in o["milestones"]})
    return dict(type="MultiStepLR", milestones=milestones, gamma=o["gamma"], **common)


def warn_long_warmup(warmup: int, iters: int) -> str | None:
    """A warning (returned too) when the warm-up takes more than half of the run: at or past
    its end (`epochs=1` of a small set against warmup_iters=50) it is cut to the run, which
    then trains at a rising learning rate throughout and never at `lr`.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     print(warn_long_warmup(50, 12))
        warmup_iters=50 is not shorter than the run's 12 iterations: the warm-up is cut to 11, so the learning rate rises for the whole run and never reaches lr after a warm-up; set warmup_iters to about a tenth of the iterations (here 1)
    """
    import warnings

    if warmup <= 0 or warmup * 2 <= iters:
        return None
    advice = f"set warmup_iters to about a tenth of the iterations (here {max(iters // 10, 1)})"
    if warmup >= iters:
        text = (f"warmup_iters={warmup} is not shorter than the run's {iters} iterations: the "
                f"warm-up is cut to {max(iters - 1, 0)}, so the learning rate rises for the "
                f"whole run and never reaches lr after a warm-up; {advice}")
    else:
        text = (f"warmup_iters={warmup} takes {warmup / iters:.0%} of the run's {iters} "
                f"iterations: the learning rate peaks only after them; {advice}")
    warnings.warn(text, stacklevel=3)
    return text


def schedulers(schedule, lr: float, iters: int, warmup: int) -> list[dict]:
    """The `param_scheduler` list: a linear warm-up over `warmup` iterations (LinearLR from
    lr/1000), then the named schedule to the end; one-cycle warms up with its own rising
    phase of `warmup` iterations."""
    name, o = schedule_spec(schedule)
    warn_long_warmup(warmup, iters)
    warmup = min(warmup, max(iters - 1, 0))
    if name == "onecycle":
        # mmengine's phases need two steps each (a shorter one divides by zero): a run under
        # four iterations stops before the end of its cycle
        total = max(iters, 4)
        rise = min(max(warmup, 2), total - 2)
        return [dict(type="GroupOneCycleLR", by_epoch=False, begin=0, end=iters,
                     total_steps=total, pct_start=rise / total,
                     div_factor=o["div_factor"], final_div_factor=o["final_div_factor"],
                     anneal_strategy=o["anneal_strategy"])]
    out = []
    if warmup > 0:
        out.append(dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0,
                        end=warmup))
    out.append(_after_warmup(name, o, lr, warmup, iters))
    return out

