"""What training and prediction left on disk, read without torch: run folders (Run),
prediction folders (PredictionFolder, PredictionSet, evaluate) and the runs table of 08.
"""

from segkit.results.fiftyone_view import (
    FIFTYONE_EXTRA,
    fiftyone_dataset,
    import_fiftyone,
)
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
    TRAINED_KEYS,
    by_class_table,
    class_table_label,
    confused_pairs,
    curves,
    per_class_table,
    runs_table,
)
from segkit.results.run_data import (
    DATA_FILE,
    data_record,
)
from segkit.results.run_lists import (
    common_validation,
    find_runs,
)
from segkit.results.runs import (
    Run,
    RunResult,
    checkpoint_problem,
    read_scalars,
)

__all__ = [
    "FIFTYONE_EXTRA",
    "import_fiftyone",
    "fiftyone_dataset",
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
    "TRAINED_KEYS",
    "class_table_label",
    "runs_table",
    "by_class_table",
    "curves",
    "per_class_table",
    "confused_pairs",
    "DATA_FILE",
    "data_record",
    "find_runs",
    "common_validation",
    "RunResult",
    "read_scalars",
    "checkpoint_problem",
    "Run",
]
