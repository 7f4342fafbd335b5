"""What training and prediction left on disk, read without torch: run folders (Run),
prediction folders (PredictionFolder, PredictionSet, evaluate) and the runs table of 08.
"""

from segkit.results.predictions import (
    PROB_SCALE,
    Evaluation,
    PredictionFolder,
    PredictionSet,
    dequantize_probs,
    evaluate,
    folder_weights,
    load_probs,
    quantize_probs,
    read_prediction_meta,
    save_probs,
    write_prediction_meta,
)
from segkit.results.report import (
    KEY_PARAMETERS,
    confused_pairs,
    curves,
    per_class_table,
    runs_table,
)
from segkit.results.runs import (
    Run,
    RunResult,
    common_validation,
    find_runs,
    read_scalars,
)

__all__ = [
    "PROB_SCALE",
    "quantize_probs",
    "dequantize_probs",
    "save_probs",
    "load_probs",
    "write_prediction_meta",
    "read_prediction_meta",
    "PredictionFolder",
    "folder_weights",
    "PredictionSet",
    "Evaluation",
    "evaluate",
    "KEY_PARAMETERS",
    "runs_table",
    "curves",
    "per_class_table",
    "confused_pairs",
    "RunResult",
    "read_scalars",
    "Run",
    "find_runs",
    "common_validation",
]
