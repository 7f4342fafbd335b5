"""The bottom layer: errors, parameter checks, output paths and atomic writes, the class table,
IoU metrics, and the `name: {options}` items recipes are written in. No torch.
"""

from segkit.core.checks import (
    check_choice,
)
from segkit.core.classes import (
    BACKGROUND,
    IGNORE_INDEX,
    TRASH,
    ClassTable,
    distinct_colors,
)
from segkit.core.errors import (
    CocoError,
    ParameterError,
    SegkitError,
    SubmissionError,
)
from segkit.core.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    iou_from_areas,
    mean_iou,
    miou,
    per_class_accuracy,
    per_class_iou,
    per_image_miou,
)
from segkit.core.options import (
    cfg_options,
    check_probability,
    named_item,
)
from segkit.core.paths import (
    PROJECT_ROOT,
    atomic_folder,
    atomic_path,
    outputs_dir,
    read_json_file,
    resolve_output_path,
    write_bytes_atomic,
    write_table,
    write_text_atomic,
)

__all__ = [
    "check_choice",
    "BACKGROUND",
    "IGNORE_INDEX",
    "ClassTable",
    "distinct_colors",
    "TRASH",
    "SegkitError",
    "CocoError",
    "ParameterError",
    "SubmissionError",
    "confusion_matrix",
    "ConfusionMatrix",
    "iou_from_areas",
    "mean_iou",
    "per_class_iou",
    "per_class_accuracy",
    "miou",
    "per_image_miou",
    "named_item",
    "check_probability",
    "cfg_options",
    "PROJECT_ROOT",
    "outputs_dir",
    "atomic_path",
    "atomic_folder",
    "write_bytes_atomic",
    "write_text_atomic",
    "resolve_output_path",
    "read_json_file",
    "write_table",
]
