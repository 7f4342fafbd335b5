"""The data notebooks, executed with papermill on the tiny sample; assertions on what they wrote."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from segkit.coco.files import label_map, load_coco
from segkit.coco.pixels import pixel_counts
from segkit.core.classes import TRASH
from segkit.core.errors import SegkitError
from segkit.folds import available_folds, split, write_folds
from tests.conftest import notebook_text, run_notebook


def test_01_eda_writes_tables_and_figures(sample_root, tmp_path):
    out = tmp_path / "eda"
    nb = run_notebook("01_eda", tmp_path, data_root=str(sample_root), output_dir=str(out),
                      n_examples=3, plan_probe=False)  # the probe: tests/test_plan.py
    assert "class_weights = balanced" in notebook_text(nb)  # the last section's plan
    coco = load_coco(sample_root / "train_all.json")
    summary = pd.read_csv(out / "class_summary.csv", index_col="class")
    assert summary.index.tolist() == list(TRASH.names)
    assert summary["annotations"].sum() == len(coco.annotations)
    pixels = pixel_counts(coco, TRASH)
    assert summary["pixels"].tolist() == pixels.sum().tolist()
    background = pd.read_csv(out / "background_heavy.csv", index_col="image_id")
    assert len(background) == 10
    assert background["background_share"].is_monotonic_decreasing
    cooc = pd.read_csv(out / "cooccurrence.csv", index_col="class")
    assert cooc.loc["Paper", "Paper"] == summary.loc["Paper", "images"]
    for figure in ("class_counts", "object_sizes", "cooccurrence", "samples", "near_duplicates"):
        assert (out / f"{figure}.png").stat().st_size > 1000
    pairs = pd.read_csv(out / "near_duplicate_pairs.csv")
    assert list(pairs.columns)[:2] == ["image_a", "image_b"]


def test_01_eda_without_images_gives_statistics_only(sample_root, tmp_path):
    data = json.loads((sample_root / "train_all.json").read_text())
    annotations_only = tmp_path / "annotations_only"
    annotations_only.mkdir()
    (annotations_only / "train_all.json").write_text(json.dumps(data))
    out = tmp_path / "eda"
    nb = run_notebook("01_eda", tmp_path, data_root=str(annotations_only), output_dir=str(out))
    assert "overlays skipped" in notebook_text(nb)
    assert not (out / "samples.png").exists()
    assert "near-duplicates skipped" in notebook_text(nb)
    assert "near-duplicates: no image files" in notebook_text(nb)  # an untimed plan
    summary = pd.read_csv(out / "class_summary.csv", index_col="class")
    assert summary["annotations"].sum() == len(data["annotations"])


def test_02_split_writes_checked_folds_and_both_reports(sample_root, tmp_path):
    out = tmp_path / "splits"
    run_notebook("02_split", tmp_path, data_root=str(sample_root), output_dir=str(out),
                 n_splits=3, seed=7, stratify_by="pixels")
    assert available_folds(out) == [0, 1, 2]
    check = pd.read_csv(out / "fold_check.csv")
    assert check["ok"].all() and check["val_images"].sum() == 24
    report = pd.read_csv(out / "fold_report.csv")
    assert set(report["variant"]) == {"annotations", "pixels"}
    worst = pd.read_csv(out / "worst_deviation.csv", header=[0, 1], index_col=0)
    assert {v for v, _ in worst.columns} == {"annotations", "pixels"}
    # the notebook wrote exactly what the library writes for the same inputs and seed
    coco = load_coco(sample_root / "train_all.json")
    folds = split.make_folds(coco, TRASH, 3, 7, "pixels", pixel_counts(coco, TRASH))
    settings = {"seed": 7, "by": "pixels", "group_by": None}  # split.json records them
    for path in write_folds(coco, folds, tmp_path / "again", settings):
        assert path.read_bytes() == (out / path.name).read_bytes()


def test_02_split_rejects_too_many_folds_before_writing(sample_root, tmp_path):
    out = tmp_path / "splits"
    with pytest.raises(SegkitError, match="n_splits=30 is larger than the 24 images"):
        run_notebook("02_split", tmp_path, data_root=str(sample_root), output_dir=str(out),
                     n_splits=30)
    assert not out.exists()


def test_03_copy_paste_generates_images_and_counts(sample_root, tmp_path, monkeypatch):
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("SEGKIT_OUTPUTS", str(outputs))
    coco = load_coco(sample_root / "train_all.json")
    splits = tmp_path / "splits"
    folds = split.make_folds(coco, TRASH, 3, 42)
    write_folds(coco, folds, splits)
    battery_image = next(a["image_id"] for a in coco.annotations if a["category_id"] == 9)
    fold = next(k for k in range(3) if folds[battery_image] != k)  # Battery in its training set
    run_notebook("03_copy_paste", tmp_path, data_root=str(sample_root), split_dir=str(splits),
                 fold=fold, images_per_class={"Battery": 1, "Clothing": 2}, n_preview=2)
    folder = outputs / "copy_paste" / f"fold{fold}"
    generated = load_coco(folder / "annotations.json")
    assert len(generated.images) == 3
    assert all((folder / img["file_name"]).is_file() for img in generated.images)
    counts = pd.read_csv(folder / "class_counts.csv", index_col="class")
    train = load_coco(splits / f"fold{fold}_train.json")
    assert counts.loc["Battery", "annotations_before"] == sum(
        a["category_id"] == 9 for a in train.annotations)
    assert counts.loc["Clothing", "annotations_added"] >= 1
    assert (folder / "preview.png").stat().st_size > 1000
    pasted = pd.read_csv(folder / "pasted.csv")
    assert set(pasted["target_image_id"]) <= {img["id"] for img in train.images}
    assert set(pasted["source_image_id"]) <= {img["id"] for img in train.images}
    for img in generated.images:  # labels are consistent COCO for the generated images
        assert label_map(generated, img, TRASH).shape == (img["height"], img["width"])


def test_03_copy_paste_unknown_fold_names_the_allowed(sample_root, tmp_path):
    splits = tmp_path / "splits"
    coco = load_coco(sample_root / "train_all.json")
    write_folds(coco, split.make_folds(coco, TRASH, 3, 42), splits)
    with pytest.raises(SegkitError, match="fold 5 is out of range; allowed: 0, 1, 2"):
        run_notebook("03_copy_paste", tmp_path, data_root=str(sample_root),
                     split_dir=str(splits), fold=5)


def _sample_with_twins(sample_root, tmp_path):
    """The sample plus two near-twins of its first images (recompressed, shifted by 2 px),
    under sequence-like names: seq{k % 4}_{k:03d}.jpg."""
    import shutil

    import cv2
    import numpy as np

    root = tmp_path / "twins"
    shutil.copytree(sample_root, root)
    data = json.loads((root / "train_all.json").read_text())
    for k in range(2):
        image = data["images"][k]
        pixels = cv2.imread(str(root / image["file_name"]))
        pixels = np.roll(pixels, 2, axis=1) if k else pixels
        name = f"{image['file_name']}.twin.jpg"
        cv2.imwrite(str(root / name), pixels, [cv2.IMWRITE_JPEG_QUALITY, 60])
        new_id = max(i["id"] for i in data["images"]) + 1
        data["images"].append({**image, "id": new_id, "file_name": name})
        data["annotations"] += [{**a, "id": 10_000 + 100 * k + n, "image_id": new_id}
                                for n, a in enumerate(data["annotations"])
                                if a["image_id"] == image["id"]]
    for k, image in enumerate(data["images"]):
        image["clip"] = f"seq{k % 4}"
    (root / "train_all.json").write_text(json.dumps(data))
    return root


def test_02_split_group_by_and_near_duplicate_counts(sample_root, tmp_path):
    root = _sample_with_twins(sample_root, tmp_path)
    out = tmp_path / "splits"
    run_notebook("02_split", tmp_path, data_root=str(root), output_dir=str(out), n_splits=3,
                 seed=3, group_by="field:clip", max_duplicate_pairs="None")
    check = pd.read_csv(out / "fold_check.csv")
    assert check["ok"].all() and check["val_groups"].sum() == 4
    assert (check["val_groups"] + check["train_groups"] == 4).all()
    report = pd.read_csv(out / "fold_report.csv")
    assert {"val_groups", "train_groups"} <= set(report.columns)
    crossing = pd.read_csv(out / "duplicate_pairs.csv", header=[0, 1], index_col=0)
    assert crossing[("annotations", "pairs_across")].tolist() == \
        check["duplicate_pairs"].tolist()
    # the same split from the library, byte for byte
    coco = load_coco(root / "train_all.json")
    folds = split.make_folds(coco, TRASH, 3, 3, group_by="field:clip")
    settings = {"seed": 3, "by": "annotations", "group_by": "field:clip"}
    for path in write_folds(coco, folds, tmp_path / "again", settings):
        assert path.read_bytes() == (out / path.name).read_bytes()


def test_02_split_refuses_near_duplicates_across_folds_above_the_limit(sample_root, tmp_path):
    root = _sample_with_twins(sample_root, tmp_path)
    out = tmp_path / "splits"
    # each image its own group: a twin and its original land in different folds
    with pytest.raises(SegkitError, match=r"near-duplicate pairs across train and val, more "
                                          r"than max_duplicate_pairs=0"):
        run_notebook("02_split", tmp_path, data_root=str(root), output_dir=str(out),
                     n_splits=13, seed=0, max_duplicate_pairs=0)
    assert not list(out.glob("fold*_*.json"))


def test_02_split_refuses_too_few_groups(sample_root, tmp_path):
    with pytest.raises(SegkitError, match=r"gives 3 groups .*fewer than n_splits=5"):
        run_notebook("02_split", tmp_path, data_root=str(sample_root),
                     output_dir=str(tmp_path / "s"), group_by="regex:^batch_0(\\d)_?[a-z]*/")
