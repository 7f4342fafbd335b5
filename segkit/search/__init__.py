"""Recipe search: the data's fingerprint and a starting recipe that fits a time budget
(`segkit plan`), search spaces over training parameters, and Optuna studies whose trials are
training runs, pruned at every validation and resumable after a kill (`segkit search`). Optuna
is the `search` extra; planning needs none.
"""

from segkit.search.fingerprint import (
    MIN_GROUPS,
    Fingerprint,
    GroupSuggestion,
    group_candidates,
    suggest_group_by,
)
from segkit.search.plan import (
    CPU,
    GPU,
    KERNEL_SECONDS,
    MARGIN,
    MAX_EPOCHS,
    TARGET_EPOCHS,
    VALIDATIONS,
    Choice,
    Plan,
    gpus_here,
    make_plan,
    parse_budget,
    size_candidates,
)
from segkit.search.probes import (
    PROBE_VAL_IMAGES,
    Probe,
    probe_run,
)
from segkit.search.search_options import (
    OBJECTIVES,
    PRUNERS,
    SAMPLERS,
    SEARCH_KEYS,
    SearchOptions,
    default_storage,
    parse_search,
)
from segkit.search.space import (
    KINDS,
    Dimension,
    label_of,
    parse_space,
    searched_names,
    suggest,
    values_of,
)
from segkit.search.study import (
    FINISHED,
    Pruned,
    SearchStudy,
)

__all__ = [
    "MIN_GROUPS",
    "GroupSuggestion",
    "Fingerprint",
    "group_candidates",
    "suggest_group_by",
    "TARGET_EPOCHS",
    "MAX_EPOCHS",
    "MARGIN",
    "KERNEL_SECONDS",
    "VALIDATIONS",
    "CPU",
    "GPU",
    "parse_budget",
    "Choice",
    "Plan",
    "gpus_here",
    "size_candidates",
    "make_plan",
    "PROBE_VAL_IMAGES",
    "Probe",
    "probe_run",
    "SEARCH_KEYS",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "SearchOptions",
    "parse_search",
    "default_storage",
    "KINDS",
    "Dimension",
    "label_of",
    "parse_space",
    "suggest",
    "values_of",
    "searched_names",
    "FINISHED",
    "Pruned",
    "SearchStudy",
]
