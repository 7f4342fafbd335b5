"""Parameter checks shared by every module: one message shape for a value that is not allowed.

Example:
    >>> check_choice("schedule", "poly", ("poly", "cosine"))
    'poly'
"""

from __future__ import annotations

from collections.abc import Iterable

from segkit.core.errors import ParameterError


def check_choice(name: str, value, allowed: Iterable):
    """`value` if it is one of `allowed`, else a ParameterError naming the parameter and listing
    what is allowed."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ParameterError(f"{name}={value!r}; allowed: {', '.join(map(str, allowed))}")
    return value
