"""Parameters that name things with options: one form for augmentations, schedules and
mmengine's `--cfg-options` dot keys. Light (no torch): training parameters are checked with it
before any work starts.

A named item is `"name"`, `"name:0.3"` (a number: the item's probability, or a loss term's
weight), `{"name": 0.3}` or `{"name": {"option": value, ...}}`.

Example:
    >>> named_item("augment", "rotate:0.5")
    ('rotate', 0.5, {})
    >>> named_item("augment", {"rotate": {"prob": 0.5, "degree": 30}})
    ('rotate', 0.5, {'degree': 30})
    >>> cfg_options("model.decode_head.dropout_ratio=0.2 train_dataloader.batch_size=2")
    {'model.decode_head.dropout_ratio': 0.2, 'train_dataloader.batch_size': 2}
"""

from __future__ import annotations

import math

from segkit.core.errors import ParameterError


def _number(name: str, text, item) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(text, bool) or not math.isfinite(value):
        raise ParameterError(f"{name} item {item!r}: {text!r} is not a number")
    return value


def named_item(name: str, item, number_key: str = "prob") -> tuple[str, float | None, dict]:
    """(name, number or None, other options) of one item; `number_key` is the option that the
    short `name:number` form sets (it is taken out of the options)."""
    if isinstance(item, str):
        key, sep, number = item.partition(":")
        key = key.strip()
        value = _number(name, number.strip(), item) if sep else None
        options: dict = {}
    elif isinstance(item, dict) and len(item) == 1:
        key, options = next(iter(item.items()))
        value = None
        if isinstance(options, (int, float)) and not isinstance(options, bool):
            value, options = _number(name, options, item), {}
        elif options is None:
            options = {}
        elif not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ParameterError(f"{name} item {item!r}: the options of {key!r} must be a "
                                 "mapping of option names to values, e.g. {rotate: {prob: 0.5}}")
        else:
            options = dict(options)
            if number_key in options:
                value = _number(name, options.pop(number_key), item)
    else:
        raise ParameterError(f"{name} item {item!r}: expected 'name', 'name:{number_key}' or "
                             f"{{name: {{option: value}}}}")
    if not isinstance(key, str) or not key:
        raise ParameterError(f"{name} item {item!r}: no name")
    return key, value, options


def check_probability(name: str, key: str, prob: float | None) -> None:
    if prob is not None and not 0.0 <= prob <= 1.0:
        raise ParameterError(f"{name} item {key!r}: probability {prob:g} is not between 0 and 1")


def cfg_options(value) -> dict:
    """mmengine dot keys -> values, from a mapping, YAML text of one (`{a.b: 1}`) or the
    `--cfg-options` text form `a.b=1 c.d=[1,2]` (values read as YAML)."""
    import yaml

    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            loaded = None
        if isinstance(loaded, dict):
            value = loaded
        else:
            pairs = {}
            for part in value.split():
                key, sep, text = part.partition("=")
                if not sep or not key:
                    raise ParameterError(f"cfg_options={value!r}: expected key=value pairs "
                                         "(mmengine dot keys, e.g. model.decode_head."
                                         "dropout_ratio=0.2) or a mapping")
                pairs[key] = yaml.safe_load(text) if text else ""
            value = pairs
    if isinstance(value, (list, tuple)):
        return cfg_options(" ".join(map(str, value)))
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ParameterError(f"cfg_options={value!r}: expected a mapping of mmengine dot keys "
                             "to values, e.g. {'model.decode_head.dropout_ratio': 0.2}")
    return dict(value)
