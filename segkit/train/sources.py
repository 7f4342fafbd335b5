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
    """
    infos = []
    for source in sources:
        ann_file, root = resolve_source(source, data_root)
        coco = load_coco(ann_file)
        own = all("seg_map" in img for img in coco.images) and coco.images
        labels = None if own else cached_label_maps(coco, classes)
        for img in coco.images:
            seg = ann_file.parent / img["seg_map"] if own else labels[img["id"]]
            infos.append(dict(img_path=str(root / img["file_name"]), seg_map_path=str(seg),
                              label_map=None, reduce_zero_label=False, seg_fields=[],
                              image_id=img["id"], source=str(ann_file)))
    return infos


def check_training_data(sources: list, val_sources: list, data_root=None) -> None:
    """Everything training will read, checked before the first iteration (not hours into a GPU
    run): each source's COCO file (with annotations, unless it brings its own label maps as
    pseudo labels do), every image it lists (there, decodable, the JSON's size), and the same
    categories in every file. One CocoError names the file and the entries."""
    from segkit.coco.files import check_image_files, check_same_categories

    cocos = []
    for source in list(sources) + list(val_sources):
        ann_file, root = resolve_source(source, data_root)
        coco = load_coco(ann_file)  # once: the check below needs no second read
        own_labels = coco.images and all("seg_map" in img for img in coco.images)
        if not own_labels and not coco.annotations:
            raise CocoError(f"{ann_file}: no annotations to train on (a training file needs "
                            "them; only pseudo-label files bring their own label maps)")
        check_image_files(coco, root)
        cocos.append(coco)
    check_same_categories(cocos)


def dataset_sources(dataset: dict) -> list:
    """The sources of every CocoSegDataset in a dataset config, looking through mmengine's
    wrappers (RepeatDataset, ConcatDataset, ...) as a whole config file may use them."""
    if "sources" in dataset:
        return list(dataset["sources"])
    inner = dataset.get("datasets") or ([dataset["dataset"]] if "dataset" in dataset else [])
    return [source for d in inner for source in dataset_sources(d)]

