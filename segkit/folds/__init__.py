"""Cross-validation folds: StratifiedGroupKFold by annotations or pixels, `group_by` rules,
fold files written whole, and the leak checks. No torch.
"""

from segkit.folds.checks import (
    check_fold_files,
    crossing_pairs,
    duplicate_pairs_per_fold,
)
from segkit.folds.files import (
    FOLD_FILE,
    SPLIT_FILE,
    available_folds,
    fold_files,
    read_split_info,
    split_command,
    split_size,
    write_folds,
)
from segkit.folds.full_data import (
    FULL_DATA_FILE,
    full_data_files,
    full_data_sources,
    images_without,
)
from segkit.folds.groups import (
    GROUP_BY_HELP,
    GROUP_SOURCES,
    group_codes,
    group_counts,
    image_groups,
    parse_group_by,
)
from segkit.folds.split import (
    PIXEL_UNITS_PER_IMAGE,
    STRATIFY_BY,
    fold_folder,
    fold_report,
    make_folds,
    split_file,
    stratification_rows,
    stratify_variants,
    worst_deviation,
)

__all__ = [
    "check_fold_files",
    "crossing_pairs",
    "duplicate_pairs_per_fold",
    "FOLD_FILE",
    "SPLIT_FILE",
    "available_folds",
    "fold_files",
    "write_folds",
    "read_split_info",
    "split_size",
    "split_command",
    "FULL_DATA_FILE",
    "full_data_files",
    "full_data_sources",
    "images_without",
    "GROUP_SOURCES",
    "GROUP_BY_HELP",
    "parse_group_by",
    "image_groups",
    "group_codes",
    "group_counts",
    "STRATIFY_BY",
    "PIXEL_UNITS_PER_IMAGE",
    "stratify_variants",
    "stratification_rows",
    "make_folds",
    "fold_report",
    "worst_deviation",
    "split_file",
    "fold_folder",
]
