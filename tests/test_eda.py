"""segkit.data.eda: per-class tables computed from annotations and label maps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from segkit.coco import pixel_counts
from segkit.coco.files import Coco, cached_label_maps, load_coco, read_label
from segkit.coco.pixels import _class_counts
from segkit.core import write_table
from segkit.core.classes import TRASH, ClassTable
from segkit.core.errors import CocoError, ParameterError
from segkit.data import eda
from tests.conftest import write_json


def test_object_sizes_measure_mask_pixels(tiny_coco, tmp_path):
    coco = load_coco(write_json(tmp_path / "t.json", tiny_coco))
    sizes = eda.object_sizes(coco, TRASH)
    assert sizes["annotation_id"].tolist() == [10, 11, 12]
    # 8x6 full-image polygon, 3x3 square, one 6-pixel column
    assert sizes["area"].tolist() == [48, 9, 6]
    assert sizes["class"].tolist() == ["General trash", "Battery", "Paper"]
    assert sizes["area_fraction"].tolist() == pytest.approx([1.0, 9 / 48, 6 / 48])
    assert list(sizes["size"]) == ["small"] * 3


def test_size_buckets_follow_coco_thresholds():
    assert eda.size_bucket(32 * 32 - 1) == "small"
    assert eda.size_bucket(32 * 32) == "medium"
    assert eda.size_bucket(96 * 96 - 1) == "medium"
    assert eda.size_bucket(96 * 96) == "large"


def test_pixel_counts_agree_with_label_maps(tiny_coco, tmp_path):
    coco = load_coco(write_json(tmp_path / "t.json", tiny_coco))
    pixels = pixel_counts(coco, TRASH)
    assert pixels.index.tolist() == [1, 2]
    assert list(pixels.columns) == list(TRASH.names)
    # image 1: trash everywhere but the 3x3 battery painted over it
    assert pixels.loc[1, "General trash"] == 48 - 9 and pixels.loc[1, "Battery"] == 9
    assert pixels.loc[2, "Paper"] == 6 and pixels.loc[2, "Background"] == 42
    assert (pixels.sum(axis=1) == 48).all()


def test_uncached_counts_equal_cached_counts(sample_root):
    coco = load_coco(sample_root / "train_all.json")
    cached = pixel_counts(coco, TRASH, cache=True)
    direct = pixel_counts(coco, TRASH, cache=False)
    pd.testing.assert_frame_equal(cached, direct)
    paths = cached_label_maps(coco, TRASH)
    first = coco.images[0]["id"]
    label = read_label(paths[first])
    assert cached.loc[first, "Battery"] == int((label == TRASH.index("Battery")).sum())


def test_box_counting_handles_polygons_away_from_the_origin():
    # a 4x4 square far from the corner of a big image, and a small one on top of it
    big = [[100, 200, 104, 200, 104, 204, 100, 204]]
    small = [[101, 201, 103, 201, 103, 203, 101, 203]]
    counts = _class_counts([big, small], [2, 9], 1000, 800, 11)
    assert counts[9] == 4 and counts[2] == 12 and counts.sum() == 800 * 1000


def test_class_summary_counts_annotations_images_and_pixels(sample_root):
    coco = load_coco(sample_root / "train_all.json")
    sizes = eda.object_sizes(coco, TRASH)
    pixels = pixel_counts(coco, TRASH)
    summary = eda.class_summary(sizes, pixels, TRASH)
    assert summary.index.tolist() == list(TRASH.names)
    assert summary["annotations"].sum() == len(coco.annotations)
    for name in ("Paper", "Battery"):
        cat = next(c["id"] for c in coco.categories if c["name"] == name)
        anns = [a for a in coco.annotations if a["category_id"] == cat]
        assert summary.loc[name, "annotations"] == len(anns)
        assert summary.loc[name, "images"] == len({a["image_id"] for a in anns})
    assert summary["pixel_share"].sum() == pytest.approx(1.0)
    assert summary.loc["Background", "images"] == len(coco.images)
    assert (summary[["small", "medium", "large"]].sum(axis=1) == summary["annotations"]).all()


def test_cooccurrence_is_symmetric_with_images_on_the_diagonal(tiny_coco, tmp_path):
    tiny_coco["annotations"].append({"id": 13, "image_id": 2, "category_id": 9,
                                     "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]})
    coco = load_coco(write_json(tmp_path / "t.json", tiny_coco))
    table = eda.cooccurrence(eda.object_sizes(coco, TRASH), TRASH)
    assert "Background" not in table.index
    assert table.loc["Battery", "Battery"] == 2
    assert table.loc["Battery", "General trash"] == table.loc["General trash", "Battery"] == 1
    assert table.loc["Paper", "General trash"] == 0
    share = eda.cooccurrence(eda.object_sizes(coco, TRASH), TRASH, normalize=True)
    assert share.loc["Battery", "Paper"] == pytest.approx(0.5)
    assert share.loc["Paper", "Battery"] == pytest.approx(1.0)
    assert share.loc["Metal"].sum() == 0


def test_background_share_sorts_highest_first():
    pixels = pd.DataFrame({"Background": [10, 90, 90, 0], "Paper": [90, 10, 10, 0]},
                          index=pd.Index([5, 7, 6, 8], name="image_id"))
    share = eda.background_share(pixels)
    assert share.index.tolist() == [6, 7, 5, 8]  # tie 0.9: lower id first; empty image last
    assert share.tolist() == pytest.approx([0.9, 0.9, 0.1, 0.0])


def test_duplicate_annotation_ids_are_renumbered_in_memory_only(tiny_coco, tmp_path):
    tiny_coco["annotations"][2]["id"] = 10
    path = write_json(tmp_path / "dup.json", tiny_coco)
    before = path.read_bytes()
    with pytest.raises(CocoError, match="duplicate annotation id 10"):
        load_coco(path)
    coco = eda.load_for_statistics(path)
    assert [a["id"] for a in coco.annotations] == [10, 11, 12]
    assert any("duplicate annotation id 10" in w and "renumbered to 12" in w
               for w in coco.warnings)
    assert path.read_bytes() == before
    assert isinstance(coco, Coco) and coco.digest


def test_other_problems_still_raise(tiny_coco, tmp_path):
    tiny_coco["annotations"][0]["category_id"] = 77
    with pytest.raises(CocoError, match="unknown category_id 77"):
        eda.load_for_statistics(write_json(tmp_path / "bad.json", tiny_coco))


def test_statistics_need_no_image_files(tiny_coco, tmp_path):
    coco = load_coco(write_json(tmp_path / "t.json", tiny_coco))
    assert eda.available_images(coco, tmp_path) == []
    assert eda.available_images(coco, None) == []
    (tmp_path / "b.jpg").write_bytes(b"x")
    assert eda.available_images(coco, tmp_path) == [2]
    assert pixel_counts(coco, TRASH, cache=False).values.sum() == 96


def test_file_categories_make_their_own_table(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": 4, "height": 4}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3,
                             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}],
            "categories": [{"id": 3, "name": "Cigarette"}]}
    coco = load_coco(write_json(tmp_path / "c.json", data))
    classes = ClassTable.for_coco(coco.categories)
    summary = eda.class_summary(eda.object_sizes(coco, classes),
                                pixel_counts(coco, classes, cache=False), classes)
    assert summary.loc["Cigarette", "pixels"] == 4 and summary.loc["Background", "pixels"] == 12


def test_pick_examples_covers_rare_classes_first(sample_root):
    coco = load_coco(sample_root / "train_all.json")
    sizes = eda.object_sizes(coco, TRASH)
    ids = [img["id"] for img in coco.images]
    picked = eda.pick_examples(sizes, ids, TRASH, n=4)
    assert len(picked) == 4 and len(set(picked)) == 4
    battery_images = set(sizes.loc[sizes["class"] == "Battery", "image_id"])
    assert battery_images & set(picked)
    assert eda.pick_examples(sizes, ids, TRASH, n=4) == picked
    with pytest.raises(ParameterError, match="n must be at least 1"):
        eda.pick_examples(sizes, ids, TRASH, n=0)


def test_write_table_is_byte_stable(tmp_path):
    df = pd.DataFrame({"a": [1.0 / 3, 2.0]}, index=pd.Index(["x", "y"], name="class"))
    first = write_table(df, tmp_path / "t.csv").read_bytes()
    assert first == write_table(df, tmp_path / "t.csv").read_bytes()
    assert first.decode().splitlines() == ["class,a", "x,0.333333", "y,2"]
    assert np.isclose(pd.read_csv(tmp_path / "t.csv", index_col=0).loc["x", "a"], 1 / 3,
                      atol=1e-6)
    assert not json.loads("[]")


def test_background_table_lists_the_most_background_images(tiny_coco, tmp_path):
    tiny_coco["images"].append({"id": 3, "file_name": "c.jpg", "width": 8, "height": 6})
    coco = load_coco(write_json(tmp_path / "t.json", tiny_coco))
    pixels = pixel_counts(coco, TRASH, cache=False)
    table = eda.background_table(pixels, coco, top=2)
    assert table.index.tolist() == [3, 2]  # all background, then 42 of 48 pixels
    assert table.columns.tolist() == ["background_share", "file_name", "objects"]
    assert table["background_share"].tolist() == pytest.approx([1.0, 42 / 48])
    assert table["file_name"].tolist() == ["c.jpg", "b.jpg"] and table["objects"].tolist() == [0, 1]
    assert len(eda.background_table(pixels, coco, top=10)) == 3
    with pytest.raises(ParameterError, match="top must be a non-negative integer"):
        eda.background_table(pixels, coco, top=-1)
    with pytest.raises(ParameterError, match=r"image ids that .*t.json does not: \[9\]"):
        eda.background_table(pixels.rename(index={3: 9}), coco)
