"""Decoded-image cache for training: images and label maps decoded once, at the training size.

The stock mmseg pipeline decodes every JPEG and label PNG again in every epoch and then resizes
it. `build_cache` does that once: each image is decoded, rescaled into the training box
(`image_size`, keeping its aspect ratio, as mmseg's `Resize(keep_ratio=True)` does: bilinear
for the image, nearest for the label) and appended, as raw uint8, to one file of images and one
of labels, which the DataLoader workers memory-map. `LoadCachedImageAndLabel` (registered with
mmseg's TRANSFORMS) replaces `LoadImageFromFile` + `LoadAnnotations` at the head of the train
pipeline; the random transforms after it are unchanged.

The cache folder is keyed by the content of every COCO file the images come from, the image and
label paths in order, and `image_size`: an edited annotation file, another data root or another
size gets a fresh cache, an unchanged one is only read. (An image file edited in place under an
unchanged COCO file is not noticed, as for segkit's label-map cache.)

Why the output is the same: the random resize that follows rescales into a box relative to
`image_size` whatever size its input has, so a cached image gives crops of the same sizes as its
original. Images no larger than the box (the competition's 512x512 photos at image_size=512)
are stored as decoded, and the pipeline's outputs are identical, pixel for pixel, to the stock
pipeline's from the same random draws (tests/test_data_cache.py). Larger photos are stored
downscaled, so crops that the random resize enlarges beyond `image_size` are upsampled from the
cached copy instead of the original: pass a larger `image_size` to `build_cache` (say twice the
training size) to keep their detail.

`FastRandomCrop` is mmseg's `RandomCrop` with its `cat_max_ratio` check (up to 10 tries, each
a full sort of the crop's labels with `np.unique`) done on a 256-bin histogram instead: the
same decisions from the same random draws, and the crop no longer dominates a worker's time.
`FastPhotoMetricDistortion` does mmseg's brightness, contrast and saturation changes through
lookup tables: the same pixels, without a float32 copy of the image per change.
`cached_pipeline` swaps all three into a train pipeline (benchmarks/bench_data.py measures it).

Example:
    from segkit.train.data_cache import build_cache, cached_pipeline
    cache_dir = build_cache(infos, image_size=512)
    pipeline = cached_pipeline(train_pipeline, cache_dir)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmcv.transforms.utils import cache_randomness
from mmseg.datasets.transforms import PhotoMetricDistortion, RandomCrop
from mmseg.registry import TRANSFORMS

from segkit.coco.files import read_label
from segkit.core.paths import outputs_dir, write_text_atomic

FORMAT = 1  # bump when the layout of a cache folder changes
_INDEX_COLUMNS = ("image_offset", "height", "width", "label_offset", "ori_height", "ori_width")


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

def cache_key(infos: list[dict], image_size: int) -> str:
    """What a cache depends on: each source COCO file's bytes, the image and label paths in
    order, and the training size."""
    h = hashlib.sha1(f"segkit-image-cache {FORMAT} {int(image_size)}\n".encode())
    for source in sorted({str(info["source"]) for info in infos if info.get("source")}):
        h.update(source.encode() + b"\0")
        h.update(hashlib.sha1(Path(source).read_bytes()).digest())
    for info in infos:
        h.update(f"{info['img_path']}\0{info['seg_map_path']}\n".encode())
    return h.hexdigest()[:20]


def cache_dir_for(infos: list[dict], image_size: int,
                  cache_root: str | os.PathLike | None = None) -> Path:
    root = Path(cache_root) if cache_root else outputs_dir() / "cache" / "images"
    return root / cache_key(infos, image_size)


def _read_color(path: str) -> np.ndarray:
    # what LoadImageFromFile does by default: cv2 decoding, 3 channels, BGR
    with open(path, "rb") as f:
        img = mmcv.imfrombytes(f.read(), flag="color", backend="cv2")
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return img


def build_cache(infos: list[dict], image_size: int,
                cache_root: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """Decode every image and label map of `infos` (mmseg data infos: `img_path`,
    `seg_map_path`, optionally `source`, the COCO file they come from) once, rescaled into
    an `image_size` box, and return the cache folder. Built once; later calls only check that
    the folder is there. Safe when several processes (ranks) build it at the same time: each
    writes a private folder and the first to finish renames it into place.

    Size on disk: about 3 bytes per pixel of image plus 1 per pixel of label at the training
    size (0.75 MB per image at 512x512).
    """
    folder = cache_dir_for(infos, image_size, cache_root)
    if (folder / "index.npy").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        scale = (int(image_size), int(image_size))
        index = np.zeros((len(infos), len(_INDEX_COLUMNS)), np.int64)
        paths = []
        with open(tmp / "images.u8", "wb") as images, open(tmp / "labels.u8", "wb") as labels:
            for i, info in enumerate(_progress(infos, progress)):
                img = _read_color(info["img_path"])
                label = read_label(info["seg_map_path"])
                if label.shape != img.shape[:2]:
                    raise ValueError(f"{info['seg_map_path']}: label map {label.shape} does not "
                                      f"match its image {img.shape[:2]} ({info['img_path']})")
                ori = img.shape[:2]
                img = mmcv.imrescale(img, scale, interpolation="bilinear", backend="cv2")
                label = mmcv.imrescale(label, scale, interpolation="nearest", backend="cv2")
                index[i] = (images.tell(), img.shape[0], img.shape[1], labels.tell(), *ori)
                images.write(np.ascontiguousarray(img, np.uint8).tobytes())
                labels.write(np.ascontiguousarray(label, np.uint8).tobytes())
                paths.append(str(info["img_path"]))
        np.save(tmp / "index.npy", index)
        (tmp / "paths.json").write_text(json.dumps(paths))
        write_text_atomic(tmp / "source.txt", json.dumps(dict(
            format=FORMAT, image_size=int(image_size), images=len(infos),
            sources=sorted({str(i["source"]) for i in infos if i.get("source")})), indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "index.npy").exists():  # not another process's finished cache
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _progress(items, enabled):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="image cache")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

class ImageCache:
    """A built cache folder, memory-mapped: `image(path)` (BGR uint8 at the training size),
    `label(path)` and `original_shape(path)`."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        if not (folder / "index.npy").exists():
            raise FileNotFoundError(f"{folder}: no image cache there (build it with "
                              "segkit.train.data_cache.build_cache)")
        self.folder = folder
        self.index = np.load(folder / "index.npy")
        self.rows = {p: i for i, p in enumerate(json.loads((folder / "paths.json").read_text()))}
        self.images = np.memmap(folder / "images.u8", np.uint8, mode="r")
        self.labels = np.memmap(folder / "labels.u8", np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.rows)

    def _row(self, path) -> np.ndarray:
        try:
            return self.index[self.rows[str(path)]]
        except KeyError:
            raise KeyError(f"{path}: not in the image cache {self.folder} (it was built "
                              "for other data; build_cache makes one for these infos)") from None

    def image(self, path) -> np.ndarray:
        off, h, w = self._row(path)[:3]
        return np.array(self.images[off:off + h * w * 3]).reshape(h, w, 3)

    def label(self, path) -> np.ndarray:
        _, h, w, off = self._row(path)[:4]
        return np.array(self.labels[off:off + h * w]).reshape(h, w)

    def original_shape(self, path) -> tuple[int, int]:
        row = self._row(path)
        return int(row[4]), int(row[5])


_OPEN: dict[tuple[int, str], ImageCache] = {}


def open_cache(folder: str | os.PathLike) -> ImageCache:
    """The cache of `folder`, opened once per process (each DataLoader worker maps it itself)."""
    key = (os.getpid(), str(folder))
    if key not in _OPEN:
        _OPEN[key] = ImageCache(folder)
    return _OPEN[key]


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------

class LoadCachedImageAndLabel(BaseTransform):
    """`LoadImageFromFile` + `LoadAnnotations` from an image cache (see `build_cache`): sets
    `img` (BGR uint8 at the training size), `img_shape`, `ori_shape` (the file's size),
    `gt_seg_map` (with the data info's `label_map` and `reduce_zero_label` applied, as
    `LoadAnnotations` does) and adds it to `seg_fields`."""

    def __init__(self, cache_dir: str):
        self.cache_dir = str(cache_dir)

    def transform(self, results: dict) -> dict:
        cache = open_cache(self.cache_dir)
        path = results["img_path"]
        img = cache.image(path)
        results["img"] = img
        results["img_shape"] = img.shape[:2]
        results["ori_shape"] = cache.original_shape(path)
        label = cache.label(path)
        if results.get("reduce_zero_label"):
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        if results.get("label_map") is not None:
            original = label.copy()
            for old, new in results["label_map"].items():
                label[original == old] = new
        results["gt_seg_map"] = label
        results.setdefault("seg_fields", []).append("gt_seg_map")
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cache_dir={self.cache_dir!r})"


class FastRandomCrop(RandomCrop):
    """mmseg's `RandomCrop`, its `cat_max_ratio` check counted with a 256-bin histogram (uint8
    labels) instead of `np.unique`: the same crop boxes from the same random draws."""

    @cache_randomness
    def crop_bbox(self, results: dict) -> tuple:
        img = results["img"]
        seg = results.get("gt_seg_map")

        def draw():
            margin_h = max(img.shape[0] - self.crop_size[0], 0)
            margin_w = max(img.shape[1] - self.crop_size[1], 0)
            offset_h = np.random.randint(0, margin_h + 1)
            offset_w = np.random.randint(0, margin_w + 1)
            return (offset_h, offset_h + self.crop_size[0],
                    offset_w, offset_w + self.crop_size[1])

        box = draw()
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                counts = _label_counts(self.crop(seg, box), self.ignore_index)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = draw()
        return box


def _label_counts(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """Pixel counts of each label present, the ignored one left out (np.unique's counts)."""
    if labels.dtype == np.uint8 and labels.ndim == 2 and labels.size < 2**24:
        # a histogram in OpenCV: no int64 copy of the crop (float32 counts are exact < 2**24)
        counts = cv2.calcHist([labels], [0], None, [256], [0, 256]).ravel().astype(np.int64)
        if 0 <= ignore_index < 256:
            counts[ignore_index] = 0
        return counts[counts > 0]
    values, counts = np.unique(labels, return_counts=True)
    return counts[values != ignore_index]


class FastPhotoMetricDistortion(PhotoMetricDistortion):
    """mmseg's `PhotoMetricDistortion`, its brightness, contrast and saturation changes of
    uint8 pixels done by a 256-entry lookup table computed with the same float32 arithmetic
    (clip, then truncate to uint8): the same pixels from the same random draws, without a
    float32 copy of the image per change."""

    def convert(self, img: np.ndarray, alpha: float = 1, beta: float = 0) -> np.ndarray:
        if img.dtype != np.uint8:
            return super().convert(img, alpha, beta)
        lut = np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)
        return cv2.LUT(np.ascontiguousarray(img), lut)


def register_transforms() -> None:
    """Register `LoadCachedImageAndLabel`, `FastRandomCrop` and `FastPhotoMetricDistortion`
    with mmseg's TRANSFORMS (idempotent; done on import)."""
    for cls in (LoadCachedImageAndLabel, FastRandomCrop, FastPhotoMetricDistortion):
        if TRANSFORMS.module_dict.get(cls.__name__) is not cls:
            TRANSFORMS.register_module(module=cls, force=True)


register_transforms()


def cached_pipeline(pipeline: list[dict], cache_dir: str | os.PathLike) -> list[dict]:
    """A train pipeline reading from the image cache: its leading `LoadImageFromFile` +
    `LoadAnnotations` become one `LoadCachedImageAndLabel`, `RandomCrop` becomes
    `FastRandomCrop` and `PhotoMetricDistortion` `FastPhotoMetricDistortion` (same options,
    same outputs). The other steps are kept as they are."""
    types = [step.get("type") for step in pipeline[:2]]
    if types != ["LoadImageFromFile", "LoadAnnotations"]:
        raise ValueError(f"cached_pipeline expects LoadImageFromFile and LoadAnnotations "
                          f"first, found {types}")
    out = [dict(type="LoadCachedImageAndLabel", cache_dir=str(cache_dir))]
    faster = {"RandomCrop": "FastRandomCrop", "PhotoMetricDistortion": "FastPhotoMetricDistortion"}
    for step in pipeline[2:]:
        out.append(dict(step, type=faster.get(step.get("type"), step.get("type"))))
    return out
