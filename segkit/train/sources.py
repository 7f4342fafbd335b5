"""Training sources: COCO files (fold files, copy-paste output, pseudo-label lists) and the
folders their images live in, turned into mmseg's data infos.

Example:
    ann_file, image_root = resolve_source("copy_paste/fold0/annotations.json")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from segkit.coco.files import cached_label_maps, load_coco
from segkit.core.classes import ClassTable
from segkit.core.errors import CocoError
from segkit.core.paths import resolve_output_path


def resolve_source(source, data_root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(COCO file, folder its file_name entries are relative to) of one training source.

    A source is a path (a relative one may be relative to outputs/) or a
    dict(ann_file=..., data_root=...). Without an explicit data root,
    images resolve against the file's `"segkit": {"image_root": ...}` entry (relative to the
    file's folder, as pseudo-label files write it), else against the file's own folder (as
    copy-paste output writes it).
    """
    if isinstance(source, dict):
        ann_file = Path(source["ann_file"])
        data_root = source.get("data_root", data_root)
    else:
        ann_file = Path(source)
    ann_file = resolve_output_path(ann_file)
    if data_root:
        return ann_file, Path(data_root)
    try:
        meta = json.loads(ann_file.read_text()).get("segkit", {})
    except (OSError, ValueError):
        meta = {}  # load_coco reports the problem properly later
    root = ann_file.parent / meta["image_root"] if "image_root" in meta else ann_file.parent
    return ann_file, root


def data_list(sources, classes: ClassTable, data_root=None) -> list[dict]:
    """mmseg data infos (img_path, seg_map_path) of every image of the sources, in order.

    Images may carry their own label map as `seg_map` (relative to the COCO file's folder):
    pseudo labels do, with 255 where the model was unsure. Others use cached label maps.
    A dict source's `exclude` (a COCO file: a full-data run's holdout) leaves out the images
    of the same file_name.
    """
    infos = []
    for source in sources:
        ann_file, root = resolve_source(source, data_root)
        coco = load_coco(ann_file)
        own = all("seg_map" in img for img in coco.images) and coco.images
        labels = None if own else cached_label_maps(coco, classes)
        images = coco.images
        if isinstance(source, dict) and source.get("exclude"):
            from segkit.folds.full_data import images_without

            held = {img["file_name"] for img in load_coco(source["exclude"]).images}
            images = images_without(images, held)
        for img in images:
            seg = ann_file.parent / img["seg_map"] if own else labels[img["id"]]
            infos.append(dict(img_path=str(root / img["file_name"]), seg_map_path=str(seg),
                              label_map=None, reduce_zero_label=False, seg_fields=[],
                              image_id=img["id"], source=str(ann_file)))
    return infos


def check_training_data(sources: list, val_sources: list, data_root=None,
                        train_resize: tuple | None = None, val_resize: tuple | None = None
                        ) -> None:
    """Everything training will read, checked before the first iteration (not hours into a GPU
    run): each source's COCO file (with annotations, unless it brings its own label maps as
    pseudo labels do), every image it lists (there, decodable, the JSON's size, big enough:
    `check_image_sizes` with the pipelines' `resize_limits`), and the same categories in every
    file. One CocoError names the file and the entries."""
    from segkit.coco.files import check_image_files, check_same_categories

    cocos = []
    n_train = len(list(sources))
    for k, source in enumerate(list(sources) + list(val_sources)):
        ann_file, root = resolve_source(source, data_root)
        coco = load_coco(ann_file)  # once: the check below needs no second read
        own_labels = coco.images and all("seg_map" in img for img in coco.images)
        if not own_labels and not coco.annotations:
            raise CocoError(f"{ann_file}: no annotations to train on (a training file needs "
                            "them; only pseudo-label files bring their own label maps)")
        check_image_sizes(coco, train_resize if k < n_train else val_resize)
        check_image_files(coco, root)
        cocos.append(coco)
    check_same_categories(cocos)


MIN_SIDE = 2  # pixels: mmseg squeezes a label map with a side of 1 into a vector, and a
# resize or flip of a 1 px wide image fails inside mmcv


def resize_limits(dataset: dict) -> tuple[tuple[int, int], float] | None:
    """((long, short) side of the box a keep-ratio Resize / RandomResize fits images into, its
    smallest ratio) of a dataset config's pipeline (looking through mmengine's wrappers), or
    None when the pipeline has no such resize."""
    inner = dataset.get("datasets") or ([dataset["dataset"]] if "dataset" in dataset else [])
    for step in dataset.get("pipeline") or []:
        if step.get("type") in ("Resize", "RandomResize") and step.get("keep_ratio") and \
                step.get("scale"):
            scale = step["scale"]
            sides = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
            ratios = step.get("ratio_range") if step.get("type") == "RandomResize" else None
            return (max(sides), min(sides)), float(min(ratios)) if ratios else 1.0
    return next((found for d in inner if (found := resize_limits(d))), None)


def check_image_sizes(coco, resize: tuple | None = None) -> None:
    """A CocoError naming the first images of `coco` that training cannot use: a side under
    MIN_SIDE pixels, as the JSON gives it or once resized into `resize` (`resize_limits`:
    the box and its smallest random ratio; mmcv's keep-ratio arithmetic), e.g. a 3x600 strip
    shrunk to 0x96 by image_size=96."""
    bad = []
    for img in coco.images:
        h, w = img["height"], img["width"]
        if min(h, w) < MIN_SIDE:
            bad.append(f"{img['file_name']} (image {img['id']}) is {w}x{h}")
        elif resize:
            (long, short), ratio = resize
            factor = min(long * ratio / max(h, w), short * ratio / min(h, w))
            nh, nw = int(h * factor + 0.5), int(w * factor + 0.5)
            if min(nh, nw) < MIN_SIDE:
                bad.append(f"{img['file_name']} (image {img['id']}) is {w}x{h}, {nw}x{nh} once "
                           f"resized into {long}x{short} at ratio {ratio:g}")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CocoError(f"{coco.path}: {'; '.join(bad[:3])}{more}: training needs at least "
                        f"{MIN_SIDE} px a side after resizing; remove such images from the file "
                        "(or raise image_size)")


def dataset_sources(dataset: dict) -> list:
    """The sources of every CocoSegDataset in a dataset config, looking through mmengine's
    wrappers (RepeatDataset, ConcatDataset, ...) as a whole config file may use them."""
    if "sources" in dataset:
        return list(dataset["sources"])
    inner = dataset.get("datasets") or ([dataset["dataset"]] if "dataset" in dataset else [])
    return [source for d in inner for source in dataset_sources(d)]

