"""The decoded-image cache and its transforms: same samples as the stock pipeline, built once."""

from __future__ import annotations

import json
import random
import shutil

import cv2
import numpy as np
import pytest
import torch

from segkit.coco.files import cached_label_maps, load_coco, read_label
from segkit.core.classes import ClassTable
from segkit.train.data_cache import (
    FastPhotoMetricDistortion,
    ImageCache,
    LoadCachedImageAndLabel,
    _label_counts,
    build_cache,
    cache_key,
    cached_pipeline,
)


def infos_of(root, name="train.json"):
    coco = load_coco(root / name)
    labels = cached_label_maps(coco, ClassTable.for_coco(coco.categories))
    return [dict(img_path=str(root / img["file_name"]), seg_map_path=str(labels[img["id"]]),
                 label_map=None, reduce_zero_label=False, seg_fields=[], source=str(coco.path))
            for img in coco.images]


def stock_pipeline(size, crop):
    return [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
            dict(type="RandomResize", scale=(size, size), ratio_range=(0.5, 2.0),
                 keep_ratio=True),
            dict(type="RandomCrop", crop_size=(crop, crop), cat_max_ratio=0.75),
            dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion"),
            dict(type="PackSegInputs")]


def test_cache_holds_decoded_images_and_labels(sample_root, tmp_path):
    infos = infos_of(sample_root)
    folder = build_cache(infos, 96, cache_root=tmp_path)
    cache = ImageCache(folder)
    assert len(cache) == len(infos)
    for info in infos[:4]:
        assert np.array_equal(cache.image(info["img_path"]), cv2.imread(info["img_path"]))
        assert np.array_equal(cache.label(info["img_path"]), read_label(info["seg_map_path"]))
        assert cache.original_shape(info["img_path"]) == (96, 96)
    # built once: a second call finds the folder and writes nothing
    stamp = (folder / "images.u8").stat().st_mtime_ns
    assert build_cache(infos, 96, cache_root=tmp_path) == folder
    assert (folder / "images.u8").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_cache_rescales_into_the_training_box(sample_root, tmp_path):
    info = infos_of(sample_root)[0]
    cache = ImageCache(build_cache([info], 48, cache_root=tmp_path))
    assert cache.image(info["img_path"]).shape == (48, 48, 3)
    label = cache.label(info["img_path"])
    assert label.shape == (48, 48)
    assert set(np.unique(label)) <= set(np.unique(read_label(info["seg_map_path"])))
    assert cache.original_shape(info["img_path"]) == (96, 96)


def test_key_follows_coco_content_and_size(sample_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    infos = infos_of(root)
    key = cache_key(infos, 96)
    assert cache_key(infos, 64) != key
    assert cache_key(infos_of(root), 96) == key
    data = json.loads((root / "train.json").read_text())
    data["annotations"] = data["annotations"][1:]
    (root / "train.json").write_text(json.dumps(data))
    assert cache_key(infos, 96) != key


def test_cached_pipeline_gives_the_stock_samples(sample_root, tmp_path):
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS

    init_default_scope("mmseg")
    from mmcv.transforms import Compose

    infos = infos_of(sample_root)
    stock_cfg = stock_pipeline(96, 64)
    cached_cfg = cached_pipeline(stock_cfg, build_cache(infos, 96, cache_root=tmp_path))
    assert [s["type"] for s in cached_cfg] == [
        "LoadCachedImageAndLabel", "RandomResize", "FastRandomCrop", "RandomFlip",
        "FastPhotoMetricDistortion", "PackSegInputs"]
    stock = Compose([TRANSFORMS.build(s) for s in stock_cfg])
    cached = Compose([TRANSFORMS.build(s) for s in cached_cfg])
    for i, info in enumerate(infos):
        outs = []
        for pipeline in (stock, cached):
            np.random.seed(i)
            random.seed(i)
            outs.append(pipeline(dict(info, seg_fields=[])))
        a, b = outs
        assert torch.equal(a["inputs"], b["inputs"])
        assert torch.equal(a["data_samples"].gt_sem_seg.data, b["data_samples"].gt_sem_seg.data)
        assert a["data_samples"].ori_shape == b["data_samples"].ori_shape


def test_load_applies_label_map_and_rejects_unknown_images(sample_root, tmp_path):
    infos = infos_of(sample_root)
    folder = build_cache(infos, 96, cache_root=tmp_path)
    load = LoadCachedImageAndLabel(str(folder))
    plain = load(dict(infos[0], seg_fields=[]))["gt_seg_map"]
    present = [int(v) for v in np.unique(plain)]
    mapped = load(dict(infos[0], seg_fields=[], label_map={present[-1]: 255}))["gt_seg_map"]
    assert np.array_equal(mapped == 255, plain == present[-1])
    with pytest.raises(KeyError, match="not in the image cache"):
        load(dict(infos[0], img_path=str(tmp_path / "elsewhere.jpg"), seg_fields=[]))
    with pytest.raises(FileNotFoundError):
        ImageCache(tmp_path / "missing")


def test_cached_pipeline_needs_the_stock_loaders():
    with pytest.raises(ValueError, match="LoadImageFromFile"):
        cached_pipeline([dict(type="LoadAnnotations"), dict(type="LoadImageFromFile")], "x")


def test_label_counts_match_unique():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 3, 7, 255], size=(40, 50), p=[0.5, 0.2, 0.1, 0.2]).astype(np.uint8)
    for view in (labels, labels[5:30, 10:45]):
        values, counts = np.unique(view, return_counts=True)
        assert np.array_equal(_label_counts(view, 255), counts[values != 255])
        assert np.array_equal(_label_counts(view.astype(np.int64), 255), counts[values != 255])


def test_photometric_lookup_tables_match_float_arithmetic():
    from mmseg.datasets.transforms import PhotoMetricDistortion

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    fast, stock = FastPhotoMetricDistortion(), PhotoMetricDistortion()
    for alpha, beta in ((1, 17.3), (1, -31.9), (0.61, 0), (1.43, 0), (1.5, 0)):
        assert np.array_equal(fast.convert(img, alpha, beta), stock.convert(img, alpha, beta))
        channel = img[:, :, 1]
        assert np.array_equal(fast.convert(channel, alpha, beta),
                              stock.convert(channel, alpha, beta))
