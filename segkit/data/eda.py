"""What is in the data: per-class statistics as pandas tables (near-duplicate images:
`segkit.data.near_duplicates`).

Two tables carry everything, and every other table is derived from them:

* `object_sizes(coco, classes)`: one row per annotation (class, image, mask area in pixels).
  The area is the annotation's own mask, before any other object covers part of it.
* `pixel_counts(coco, classes)`: one row per image, one column per class, the pixels of each
  class in the image's label map (largest annotation painted first, the segkit rule). With
  `cache=True` the label maps come from `segkit.coco.files.cached_label_maps` (rasterised once, then
  read); with `cache=False` the same counts are computed on run-length encodings without
  making any map, which keeps huge photos (TACO's 2448x3264) cheap in time and disk. No image
  file is read either way: statistics work on annotation files whose images are absent.

Sizes follow the COCO buckets: small < 32x32 px, medium < 96x96 px, large otherwise.

Example:
    coco = load_for_statistics("data/train_all.json")
    classes = ClassTable.for_coco(coco.categories)
    sizes, pixels = object_sizes(coco, classes), pixel_counts(coco, classes)
    class_summary(sizes, pixels, classes)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from segkit.coco.checks import validate
from segkit.coco.files import (
    Coco,
    _compressed_rle,
    image_path,
    read_json,
)
from segkit.core.classes import BACKGROUND, ClassTable
from segkit.core.errors import CocoError, ParameterError

SMALL_AREA = 32 * 32
MEDIUM_AREA = 96 * 96
SIZE_BUCKETS = ("small", "medium", "large")


def load_for_statistics(path: str | os.PathLike) -> Coco:
    """`load_coco` for statistics: duplicate annotation ids are renumbered in memory.

    Real files have them (TACO's annotations.json reuses ids 309 and 4040); no statistic
    depends on annotation ids, so instead of refusing the file, each repeat gets a new id
    after the largest one and the change is listed in `coco.warnings`. Every other problem
    raises a CocoError as `load_coco` does. The file itself is never changed.

    Example:
        coco = load_for_statistics("taco/annotations.json")
        [w for w in coco.warnings if "renumbered" in w]
    """
    path = Path(path)
    data, raw = read_json(path)
    notes = []
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if isinstance(annotations, list):
        ids = [a.get("id") for a in annotations if isinstance(a, dict)]
        numeric = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
        next_id = max(numeric, default=-1) + 1
        seen: set = set()
        renumbered = []
        for ann in annotations:
            if not isinstance(ann, dict) or "id" not in ann:
                continue
            if ann["id"] in seen:
                notes.append(f"{path}: duplicate annotation id {ann['id']} (image "
                             f"{ann.get('image_id')}) renumbered to {next_id} in memory")
                ann = {**ann, "id": next_id}
                next_id += 1
            seen.add(ann["id"])
            renumbered.append(ann)
        if notes:
            data = {**data, "annotations": renumbered}
    problems, warnings = validate(data, str(path))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise CocoError(problems[0] + more)
    digest = hashlib.sha1(raw).hexdigest()
    if notes:  # the renumbered content is not the file's: keep label caches apart
        digest = hashlib.sha1(raw + json.dumps(notes).encode()).hexdigest()
    extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    return Coco(path=path, images=data["images"], annotations=data.get("annotations", []),
                categories=data["categories"], extra=extra, digest=digest,
                warnings=notes + warnings)


def size_bucket(area: float) -> str:
    """COCO's object-size bucket of an area in pixels: 'small', 'medium' or 'large'."""
    if area < SMALL_AREA:
        return "small"
    return "medium" if area < MEDIUM_AREA else "large"


def object_sizes(coco: Coco, classes: ClassTable) -> pd.DataFrame:
    """One row per annotation: annotation_id, image_id, class, area (mask pixels),
    area_fraction (of the image) and size ('small' / 'medium' / 'large').

    Example:
        object_sizes(coco, TRASH).groupby("class")["area"].median()
    """
    mapping = classes.category_to_index(coco.categories, str(coco.path))
    rows = []
    for ann in coco.annotations:
        image = coco.image_by_id[ann["image_id"]]
        h, w = image["height"], image["width"]
        rle = {"size": [h, w], "counts": _compressed_rle(ann["segmentation"], h, w)}
        area = int(mask_utils.area(rle))
        rows.append((ann["id"], ann["image_id"], classes.names[mapping[ann["category_id"]]],
                     area, area / (h * w)))
    df = pd.DataFrame(rows, columns=["annotation_id", "image_id", "class", "area",
                                     "area_fraction"])
    df["area"] = df["area"].astype(np.int64)
    df["size"] = pd.Categorical([size_bucket(a) for a in df["area"]], categories=SIZE_BUCKETS)
    return df


def class_summary(sizes: pd.DataFrame, pixels: pd.DataFrame, classes: ClassTable
                  ) -> pd.DataFrame:
    """Per class: annotations, images containing it, pixels, pixel share (of all pixels),
    annotations per size bucket and the median object area. Background has pixels only.

    Example:
        class_summary(object_sizes(coco, TRASH), pixel_counts(coco, TRASH), TRASH)
    """
    names = list(classes.names)
    table = pd.DataFrame(index=pd.Index(names, name="class"))
    by_class = sizes.groupby("class", observed=True)
    table["annotations"] = by_class.size().reindex(names, fill_value=0).astype(np.int64)
    table["images"] = by_class["image_id"].nunique().reindex(names, fill_value=0).astype(np.int64)
    table.loc[BACKGROUND, "images"] = int((pixels[BACKGROUND] > 0).sum())
    table["pixels"] = pixels.sum().reindex(names, fill_value=0).astype(np.int64)
    total = table["pixels"].sum()
    table["pixel_share"] = table["pixels"] / total if total else 0.0
    buckets = sizes.groupby(["class", "size"], observed=False).size().unstack(fill_value=0)
    for bucket in SIZE_BUCKETS:
        column = buckets[bucket] if bucket in buckets.columns else pd.Series(dtype=np.int64)
        table[bucket] = column.reindex(names, fill_value=0).astype(np.int64)
    table["median_area"] = by_class["area"].median().reindex(names)
    return table


def cooccurrence(sizes: pd.DataFrame, classes: ClassTable, normalize: bool = False
                 ) -> pd.DataFrame:
    """Images in which both classes have an annotation (diagonal: images with the class).

    With `normalize`, row i holds P(column class present | row class present).

    Example:
        sns.heatmap(cooccurrence(sizes, TRASH, normalize=True))
    """
    names = [n for n in classes.names if n != BACKGROUND]
    presence = (pd.crosstab(sizes["image_id"], sizes["class"]) > 0)
    presence = presence.reindex(columns=names, fill_value=False).astype(np.int64)
    table = presence.T @ presence
    table.index.name, table.columns.name = "class", "with class"
    if normalize:
        diagonal = np.diag(table.values).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            table = table.astype(np.float64).div(np.where(diagonal > 0, diagonal, np.nan), axis=0)
        table = table.fillna(0.0)
    return table


def background_share(pixels: pd.DataFrame) -> pd.Series:
    """Share of Background pixels per image, highest first (ties: lower image id first).

    Example:
        background_share(pixel_counts(coco, TRASH)).head(10)
    """
    totals = pixels.sum(axis=1)
    share = (pixels[BACKGROUND] / totals.where(totals > 0)).fillna(0.0).rename("background_share")
    order = np.lexsort((share.index.to_numpy(), -share.to_numpy()))
    return share.iloc[order]


def background_table(pixels: pd.DataFrame, coco: Coco, top: int = 10) -> pd.DataFrame:
    """The `top` images that are most background (candidates for copy-paste targets): index
    image_id, columns background_share, file_name, objects (annotations in the image); order
    of `background_share`.

    Example:
        background_table(pixel_counts(coco, TRASH), coco, top=10)
    """
    if not isinstance(top, (int, np.integer)) or isinstance(top, bool) or top < 0:
        raise ParameterError(f"top must be a non-negative integer, got {top!r}")
    unknown = set(pixels.index) - coco.image_by_id.keys()
    if unknown:
        raise ParameterError(f"the pixels table has image ids that {coco.path} does not: "
                             f"{sorted(unknown)[:5]}")
    table = background_share(pixels).head(int(top)).to_frame()
    table["file_name"] = [coco.image_by_id[i]["file_name"] for i in table.index]
    table["objects"] = np.asarray([len(coco.annotations_by_image[i]) for i in table.index],
                                  np.int64)
    return table


def available_images(coco: Coco, data_root: str | os.PathLike | None) -> list[int]:
    """Ids of the images whose files exist under `data_root` (none when it is None)."""
    if data_root is None:
        return []
    return [img["id"] for img in coco.images if image_path(data_root, img).is_file()]


def pick_examples(sizes: pd.DataFrame, image_ids: list[int], classes: ClassTable, n: int = 6
                  ) -> list[int]:
    """Up to `n` image ids among `image_ids` that together show as many classes as possible:
    the rarest classes first, each contributing its first image (deterministic)."""
    if n < 1:
        raise ParameterError(f"n must be at least 1, got {n}")
    allowed = set(image_ids)
    shown = sizes[sizes["image_id"].isin(allowed)]
    picked: list[int] = []
    for name in shown["class"].value_counts(ascending=True).index:
        if len(picked) >= n:
            break
        candidates = sorted(set(shown.loc[shown["class"] == name, "image_id"]) - set(picked))
        if candidates:
            picked.append(int(candidates[0]))
    for image_id in image_ids:  # fill up with the rest in file order
        if len(picked) >= n:
            break
        if image_id not in picked:
            picked.append(int(image_id))
    return picked


