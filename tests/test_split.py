"""segkit.split: StratifiedGroupKFold folds, fold files, fold report and checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segkit import split
from segkit.__main__ import main
from segkit.classes import TRASH
from segkit.coco import load_coco
from segkit.eda import pixel_counts
from segkit.errors import ParameterError


@pytest.fixture(scope="module")
def train(sample_root):
    return load_coco(sample_root / "train_all.json")


@pytest.mark.parametrize("by", split.STRATIFY_BY)
def test_every_image_is_validated_exactly_once(train, by):
    pixels = pixel_counts(train, TRASH)
    folds = split.make_folds(train, TRASH, n_splits=4, seed=42, by=by, pixels=pixels)
    assert folds.index.tolist() == [img["id"] for img in train.images]
    assert sorted(set(folds)) == [0, 1, 2, 3]
    # balanced in images: 24 images in 4 folds
    assert folds.value_counts().max() - folds.value_counts().min() <= 3


def test_rows_are_annotations_with_background_for_empty_images(train):
    labels, groups = split.stratification_rows(train, TRASH, "annotations")
    assert len(labels) == len(train.annotations) + sum(
        1 for img in train.images if not train.annotations_by_image[img["id"]])
    assert set(groups) == {img["id"] for img in train.images}
    battery = TRASH.index("Battery")
    assert (labels == battery).sum() == sum(
        1 for a in train.annotations if a["category_id"] == 9)


def test_pixel_rows_follow_pixel_shares(train):
    pixels = pixel_counts(train, TRASH)
    labels, groups = split.stratification_rows(train, TRASH, "pixels", pixels)
    first = train.images[0]["id"]
    mine = labels[groups == first]
    present = np.flatnonzero(pixels.loc[first].to_numpy())
    assert sorted(set(mine)) == present.tolist()  # every class present gets >= 1 unit
    background = (mine == 0).sum() / len(mine)
    share = pixels.loc[first, "Background"] / pixels.loc[first].sum()
    assert background == pytest.approx(share, abs=0.1)


def test_same_seed_same_bytes_other_seed_other_folds(train, tmp_path):
    a = split.write_folds(train, split.make_folds(train, TRASH, 3, 7), tmp_path / "a")
    b = split.write_folds(train, split.make_folds(train, TRASH, 3, 7), tmp_path / "b")
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    other = [split.make_folds(train, TRASH, 3, s) for s in range(1, 6)]
    assert any(not f.equals(split.make_folds(train, TRASH, 3, 7)) for f in other)


def test_fold_files_are_valid_subsets_keeping_ids_and_names(train, tmp_path, sample_root):
    folds = split.make_folds(train, TRASH, 3, 42)
    written = split.write_folds(train, folds, tmp_path)
    assert sorted(p.name for p in written) == sorted(
        [f"fold{k}_{part}.json" for k in range(3) for part in ("train", "val")] + ["folds.csv"])
    original = json.loads((sample_root / "train_all.json").read_text())
    for k in range(3):
        val = load_coco(tmp_path / f"fold{k}_val.json")
        tr = load_coco(tmp_path / f"fold{k}_train.json")
        assert {i["id"] for i in val.images} == set(folds[folds == k].index)
        assert len(val.images) + len(tr.images) == len(train.images)
        for img in val.images:
            assert img == train.image_by_id[img["id"]]
        assert len(val.annotations) + len(tr.annotations) == len(train.annotations)
        assert val.categories == original["categories"]
    report = split.check_fold_files(tmp_path, train)
    assert report["ok"].all() and report["val_images"].sum() == len(train.images)


def test_check_finds_leaks(train, tmp_path):
    folds = split.make_folds(train, TRASH, 3, 42)
    split.write_folds(train, folds, tmp_path)
    val0 = json.loads((tmp_path / "fold0_val.json").read_text())
    train1 = json.loads((tmp_path / "fold1_train.json").read_text())
    val1 = json.loads((tmp_path / "fold1_val.json").read_text())
    leaked = val0["images"][0]
    val1["images"].append(leaked)  # in fold 0's and fold 1's validation, and in fold 1's train
    (tmp_path / "fold1_val.json").write_text(json.dumps(val1))
    report = split.check_fold_files(tmp_path, train).set_index("fold")
    assert leaked in train1["images"]
    assert report.loc[1, "in_train_and_val"] == 1
    assert report.loc[0, "in_another_val"] == 1 and report.loc[1, "in_another_val"] == 1
    assert not report.loc[1, "ok"] and report.loc[2, "ok"]


def test_report_shares_add_up_and_pixels_variant_balances_pixels(train):
    pixels = pixel_counts(train, TRASH)
    folds = split.make_folds(train, TRASH, 3, 42)
    report = split.fold_report(train, TRASH, folds, pixels)
    assert set(report["fold"]) == {0, 1, 2}
    sums = report.groupby("class")[["annotation_share", "pixel_share"]].sum(min_count=1)
    assert np.allclose(sums["pixel_share"], 1.0)
    assert np.allclose(sums.drop("Background")["annotation_share"], 1.0)
    assert report.loc[report["class"] == "Background", "annotation_share"].isna().all()
    # hand-check one cell against the fold's own annotations
    val_ids = set(folds[folds == 1].index)
    paper = [a for a in train.annotations if a["category_id"] == 2]
    expected = sum(a["image_id"] in val_ids for a in paper) / len(paper)
    cell = report[(report["fold"] == 1) & (report["class"] == "Paper")]["annotation_share"]
    assert cell.item() == pytest.approx(expected)
    worst = split.worst_deviation(report)
    assert worst.loc["Paper", "worst_annotation_deviation"] == pytest.approx(
        (report[report["class"] == "Paper"]["annotation_share"] - 1 / 3).abs().max())


def test_pixel_variant_lowers_pixel_deviation_on_many_images(tmp_path):
    from segkit.sample import make_sample

    root = make_sample(tmp_path / "s", n_train=120, n_test=1, size=48, seed=3)
    coco = load_coco(root / "train_all.json")
    pixels = pixel_counts(coco, TRASH)
    worst = {}
    for by in split.STRATIFY_BY:
        report = split.fold_report(coco, TRASH, split.make_folds(coco, TRASH, 5, 42, by, pixels),
                                   pixels)
        worst[by] = split.worst_deviation(report)["worst_pixel_deviation"].mean()
    assert worst["pixels"] < worst["annotations"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_splits": 25}, r"n_splits=25 is larger than the 24 images.*allowed: 2\.\.24"),
    ({"n_splits": 1}, "n_splits must be an integer of at least 2"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"by": "area"}, "by must be one of annotations, pixels; got 'area'"),
])
def test_bad_parameters_raise_before_writing(train, tmp_path, kwargs, message, sample_root):
    with pytest.raises(ParameterError, match=message):
        split.split_file(sample_root / "train_all.json", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_pixels_variant_needs_the_pixel_table(train):
    with pytest.raises(ParameterError, match="needs the pixels table"):
        split.make_folds(train, TRASH, 3, 42, by="pixels")


def test_fold_files_names_the_allowed_folds(train, tmp_path):
    with pytest.raises(ParameterError, match="no fold files"):
        split.fold_files(tmp_path, 0)
    split.write_folds(train, split.make_folds(train, TRASH, 3, 42), tmp_path)
    assert split.fold_files(tmp_path, 2) == (tmp_path / "fold2_train.json",
                                             tmp_path / "fold2_val.json")
    with pytest.raises(ParameterError, match=r"fold 3 is out of range; allowed: 0, 1, 2"):
        split.fold_files(tmp_path, 3)


def test_cli_split(tmp_path, sample_root, capsys):
    out = tmp_path / "splits"
    assert main(["split", str(sample_root / "train_all.json"), "--out", str(out),
                 "--n-splits", "3", "--by", "pixels"]) == 0
    assert split.available_folds(out) == [0, 1, 2]
    assert f"to {out}" in capsys.readouterr().out
    assert main(["split", str(sample_root / "train_all.json"), "--out", str(tmp_path / "x"),
                 "--n-splits", "99"]) == 2
    assert "n_splits=99" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_fewer_folds_over_more_leave_no_stale_files(sample_root, tmp_path):
    from segkit.split import available_folds, check_fold_files, split_file

    split_file(sample_root / "train_all.json", tmp_path, n_splits=5)
    split_file(sample_root / "train_all.json", tmp_path, n_splits=3)
    assert available_folds(tmp_path) == [0, 1, 2]
    assert check_fold_files(tmp_path)["ok"].all()
