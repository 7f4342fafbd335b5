"""COCO files: load and validate (one clear error naming file and entry), annotation checks,
RLE, label maps rasterised once and cached, pixel counts per class. No torch.
"""

from segkit.coco.annotation_checks import (
    OFF_IMAGE_TOLERANCE,
    ExtraChecks,
    PolygonChecks,
    RleChecks,
    annotation_where,
    show_value,
)
from segkit.coco.checks import (
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    category_name_problems,
    file_name_problem,
    validate,
)
from segkit.coco.files import (
    Coco,
    cache_key,
    cached_label_maps,
    check_coco,
    check_image_files,
    check_images,
    check_same_categories,
    image_path,
    label_cache_dir,
    label_map,
    load_coco,
    rasterize,
    read_image,
    read_json,
    read_label,
    subset,
    write_coco,
    write_png,
)
from segkit.coco.folders import (
    IMAGE_SUFFIXES,
    folder_image_entries,
    folder_images,
    image_folder_coco,
)
from segkit.coco.pixels import (
    pixel_counts,
)
from segkit.coco.rle import (
    MAX_RLE_CHUNKS,
    decode_rle_counts,
    rle_string_problems,
)

__all__ = [
    "OFF_IMAGE_TOLERANCE",
    "show_value",
    "annotation_where",
    "PolygonChecks",
    "RleChecks",
    "ExtraChecks",
    "MAX_IMAGE_SIDE",
    "MAX_IMAGE_PIXELS",
    "validate",
    "category_name_problems",
    "file_name_problem",
    "Coco",
    "read_json",
    "load_coco",
    "check_same_categories",
    "rasterize",
    "label_map",
    "cache_key",
    "label_cache_dir",
    "cached_label_maps",
    "write_png",
    "read_label",
    "image_path",
    "read_image",
    "check_images",
    "check_image_files",
    "check_coco",
    "subset",
    "write_coco",
    "IMAGE_SUFFIXES",
    "folder_images",
    "folder_image_entries",
    "image_folder_coco",
    "pixel_counts",
    "MAX_RLE_CHUNKS",
    "decode_rle_counts",
    "rle_string_problems",
]
