"""What a notebook's first code cell calls: its parameters checked as papermill delivered them.

papermill's `-p name value` passes a list or a dict as text (`-p scales "[0.75, 1.0]"` arrives as
the string "[0.75, 1.0]"), and a misspelt `-p n_split 3` only warns. `check_parameters` reads
such text as YAML where the notebook's default is a list, a dict or a number, and stops before
any work on a value that does not read as one, or on a name the notebook does not declare.

Example (the first code cell of 05_predict):
    >>> check_parameters(globals(), "05_predict")                        # doctest: +SKIP
"""

from __future__ import annotations

import os

from segkit.errors import ParameterError

# what IPython puts in a kernel's namespace before any cell runs
_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def _read_text(name: str, value: str, default):
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    expected = list if isinstance(default, (list, tuple)) else dict \
        if isinstance(default, dict) else (int, float)
    if isinstance(parsed, expected) and not isinstance(parsed, bool):
        return parsed
    if default is None or parsed is None:  # "None" or "" for an optional value
        return parsed
    kind, example = ("a list", "[0.75, 1.0]") if expected is list else \
        ("a mapping", "{a: 1}") if expected is dict else ("a number", "3")
    raise ParameterError(f"{name}={value!r}: expected {kind} like its default {default!r}; "
                         f"with papermill pass it as YAML, e.g. -p {name} '{example}' or "
                         f"-y '{name}: {example}'")


def check_parameters(namespace: dict, notebook: str | os.PathLike) -> None:
    """Check the parameters in a notebook's namespace (its `globals()`) against its
    `parameters` cell, in place: text given for a list, dict or number parameter is read as
    YAML; a name papermill injected that the notebook does not declare is a ParameterError."""
    from segkit.pipeline import notebook_defaults

    defaults = notebook_defaults(notebook)
    unknown = sorted(k for k, v in namespace.items()
                     if not k.startswith("_") and k not in defaults and k not in _KERNEL_NAMES
                     and isinstance(v, (str, int, float, bool, list, dict, type(None))))
    if unknown:
        raise ParameterError(f"{notebook} has no parameters {unknown}; it has: "
                             f"{', '.join(defaults)}")
    for name, default in defaults.items():
        value = namespace.get(name)
        wants_structure = isinstance(default, (list, tuple, dict)) or (
            isinstance(default, (int, float)) and not isinstance(default, bool))
        if isinstance(value, str) and (wants_structure or default is None):
            namespace[name] = _read_text(name, value, default)
