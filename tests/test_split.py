"""segkit.folds.split: StratifiedGroupKFold folds, fold files, fold report and checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from segkit.coco import write_coco
from segkit.coco.files import load_coco
from segkit.coco.pixels import pixel_counts
from segkit.core.classes import TRASH
from segkit.core.errors import CocoError, ParameterError
from segkit.core.paths import file_sha256
from segkit.flow.cli import main
from segkit.folds import (
    available_folds,
    check_fold_files,
    duplicate_pairs_per_fold,
    fold_files,
    group_counts,
    image_groups,
    read_split_info,
    split,
    write_folds,
)
from segkit.folds import files as fold_sets


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
    a = write_folds(train, split.make_folds(train, TRASH, 3, 7), tmp_path / "a")
    b = write_folds(train, split.make_folds(train, TRASH, 3, 7), tmp_path / "b")
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    other = [split.make_folds(train, TRASH, 3, s) for s in range(1, 6)]
    assert any(not f.equals(split.make_folds(train, TRASH, 3, 7)) for f in other)


def test_fold_files_are_valid_subsets_keeping_ids_and_names(train, tmp_path, sample_root):
    folds = split.make_folds(train, TRASH, 3, 42)
    written = write_folds(train, folds, tmp_path)
    assert sorted(p.name for p in written) == sorted(
        [f"fold{k}_{part}.json" for k in range(3) for part in ("train", "val")] +
        ["folds.csv", "split.json"])
    recorded = read_split_info(tmp_path)  # how the set was made, and each file's sha256
    assert (recorded["n_splits"], recorded["images"]) == (3, len(train.images))
    assert recorded["files"]["fold0_val.json"] == file_sha256(tmp_path / "fold0_val.json")
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
    report = check_fold_files(tmp_path, train)
    assert report["ok"].all() and report["val_images"].sum() == len(train.images)


def test_check_finds_leaks(train, tmp_path):
    folds = split.make_folds(train, TRASH, 3, 42)
    write_folds(train, folds, tmp_path)
    val0 = json.loads((tmp_path / "fold0_val.json").read_text())
    train1 = json.loads((tmp_path / "fold1_train.json").read_text())
    val1 = json.loads((tmp_path / "fold1_val.json").read_text())
    leaked = val0["images"][0]
    val1["images"].append(leaked)  # in fold 0's and fold 1's validation, and in fold 1's train
    (tmp_path / "fold1_val.json").write_text(json.dumps(val1))
    report = check_fold_files(tmp_path, train).set_index("fold")
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
    from segkit.data.sample import make_sample

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
        fold_files(tmp_path, 0)
    write_folds(train, split.make_folds(train, TRASH, 3, 42), tmp_path)
    assert fold_files(tmp_path, 2) == (tmp_path / "fold2_train.json",
                                             tmp_path / "fold2_val.json")
    with pytest.raises(ParameterError, match=r"fold 3 is out of range; allowed: 0, 1, 2"):
        fold_files(tmp_path, 3)


def test_cli_split(tmp_path, sample_root, capsys):
    out = tmp_path / "splits"
    assert main(["split", str(sample_root / "train_all.json"), "--out", str(out),
                 "--n-splits", "3", "--by", "pixels"]) == 0
    assert available_folds(out) == [0, 1, 2]
    assert f"to {out}" in capsys.readouterr().out
    assert main(["split", str(sample_root / "train_all.json"), "--out", str(tmp_path / "x"),
                 "--n-splits", "99"]) == 2
    assert "n_splits=99" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_fewer_folds_over_more_leave_no_stale_files(sample_root, tmp_path):
    from segkit.folds.checks import check_fold_files
    from segkit.folds.files import available_folds
    from segkit.folds.split import split_file

    split_file(sample_root / "train_all.json", tmp_path, n_splits=5)
    split_file(sample_root / "train_all.json", tmp_path, n_splits=3)
    assert available_folds(tmp_path) == [0, 1, 2]
    assert check_fold_files(tmp_path)["ok"].all()


# --- groups (group_by) -------------------------------------------------------------------------

def _grouped_copy(sample_root, tmp_path, name="grouped.json"):
    """The sample's train_all.json with video-like file names (6 sequences of 4 frames, every
    5th frame, sequence 5 in two runs) and a video_id field."""
    data = json.loads((sample_root / "train_all.json").read_text())
    for k, image in enumerate(data["images"]):
        sequence, frame = k % 6, (k // 6) * 5 + (100 if k % 6 == 5 and k >= 12 else 0)
        image["file_name"] = f"clips/seq{sequence}_f{frame:04d}.jpg"
        image["video_id"] = sequence
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("by", split.STRATIFY_BY)
@pytest.mark.parametrize(("group_by", "n_groups"), [
    (r"regex:^(\w+?)_", 6), ("regex:seq[0-9]", 6), ("field:video_id", 6), ("frames:5", 7),
    ("regex:^clips/seq(\\d)", 6)])
def test_group_by_keeps_each_group_in_one_fold(sample_root, tmp_path, by, group_by, n_groups):
    coco = load_coco(_grouped_copy(sample_root, tmp_path))
    groups = image_groups(coco, group_by)
    assert groups.nunique() == n_groups
    folds = split.make_folds(coco, TRASH, 3, 42, by, pixel_counts(coco, TRASH), group_by)
    assert sorted(set(folds)) == [0, 1, 2]
    assert (pd.DataFrame({"g": groups, "f": folds}).groupby("g")["f"].nunique() == 1).all()
    report = split.fold_report(coco, TRASH, folds, pixel_counts(coco, TRASH), group_by)
    per_fold = report.groupby("fold")[["val_groups", "train_groups"]].first()
    assert per_fold["val_groups"].sum() == n_groups
    assert (per_fold["val_groups"] + per_fold["train_groups"] == n_groups).all()
    out = tmp_path / "out"
    write_folds(coco, folds, out)
    check = check_fold_files(out, coco, group_by=group_by)
    assert check["ok"].all() and check["val_groups"].sum() == n_groups


def test_group_names_of_each_source(sample_root, tmp_path):
    coco = load_coco(_grouped_copy(sample_root, tmp_path))
    first = coco.images[0]["id"]
    assert image_groups(coco, r"regex:^(\w+?)_")[first] == "seq0"
    assert image_groups(coco, "regex:seq\\d")[first] == "seq0"  # whole match
    assert image_groups(coco, "field:video_id")[first] == "0"
    frames = image_groups(coco, "frames:5")
    assert frames[first] == "clips/seq0_f0000..0015.jpg"
    assert set(frames[frames.str.startswith("clips/seq5")]) == {
        "clips/seq5_f0000..0005.jpg", "clips/seq5_f0110..0115.jpg"}
    # a smaller gap splits every frame apart; the default keeps today's image groups
    assert image_groups(coco, "frames:4").nunique() == len(coco.images)
    assert image_groups(coco).tolist() == [str(i["id"]) for i in coco.images]
    assert image_groups(coco, "").tolist() == image_groups(coco, None).tolist()


def test_no_group_by_is_todays_split_byte_for_byte(train, tmp_path):
    # each image its own group through a field: the same folds as without group_by
    for by in split.STRATIFY_BY:
        pixels = pixel_counts(train, TRASH)
        plain = split.make_folds(train, TRASH, 4, 3, by, pixels)
        assert plain.equals(split.make_folds(train, TRASH, 4, 3, by, pixels, "field:id"))
    a = split.split_file(train.path, tmp_path / "a", 3, 5, group_by=None)
    b = split.split_file(train.path, tmp_path / "b", 3, 5)
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_group_by_same_seed_same_bytes(sample_root, tmp_path):
    path = _grouped_copy(sample_root, tmp_path)
    a = split.split_file(path, tmp_path / "a", 3, 7, "pixels", "frames:5")
    b = split.split_file(path, tmp_path / "b", 3, 7, "pixels", "frames:5")
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


@pytest.mark.parametrize(("group_by", "error", "message"), [
    ("regex:(unclosed", ParameterError, r"not a valid regular expression"),
    ("regex:^zzz(\\d)", ParameterError, r"does not match image \d+ \('seq0_f0000.jpg'; 24 of 24"),
    ("field:camera", CocoError, r"image \d+ \(clips/seq0_f0000.jpg\) has no field 'camera'"),
    ("frames:x", ParameterError, "the gap must be a non-negative integer"),
    ("frame:5", ParameterError, "unknown group_by source 'frame'"),
    ("video_id", ParameterError, "group_by is None"),
    ("field:", ParameterError, "name the image field"),
])
def test_bad_group_by_is_one_clear_error(sample_root, tmp_path, group_by, error, message):
    path = _grouped_copy(sample_root, tmp_path)
    with pytest.raises(error, match=message):
        split.split_file(path, tmp_path / "out", 3, group_by=group_by)
    assert not (tmp_path / "out").exists()


def test_file_name_without_frame_number_is_named(sample_root, tmp_path):
    data = json.loads(_grouped_copy(sample_root, tmp_path).read_text())
    data["images"][3]["file_name"] = "clips/cover.jpg"
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ParameterError, match=r"image \d+ \(clips/cover.jpg\) has no frame number"):
        split.make_folds(load_coco(path), TRASH, 3, 42, group_by="frames:5")


def test_fewer_groups_than_folds(sample_root, tmp_path):
    path = _grouped_copy(sample_root, tmp_path)
    with pytest.raises(ParameterError, match=r"gives 6 groups \(seq0, seq1, seq2, seq3, seq4, "
                                             r"\.\.\.\), fewer than n_splits=7; allowed: 2\.\.6"):
        split.split_file(path, tmp_path / "out", 7, group_by=r"regex:^(\w+?)_")
    assert not (tmp_path / "out").exists()


def test_a_group_straddling_train_and_val_is_refused(sample_root, tmp_path):
    coco = load_coco(_grouped_copy(sample_root, tmp_path))
    # folds made per image (someone else's files): sequences end up on both sides
    write_folds(coco, split.make_folds(coco, TRASH, 3, 42), tmp_path / "out")
    assert check_fold_files(tmp_path / "out", coco)["ok"].all()
    with pytest.raises(CocoError, match=r"fold\d_val.json: group 'seq\d' \(group_by "
                                        r"'field:video_id'\)|group '\d' \(group_by"):
        check_fold_files(tmp_path / "out", coco, group_by="field:video_id")
    with pytest.raises(CocoError, match=r"group 'seq\d' \(group_by 'regex:\^\(\\w\+\?\)_'\) "
                                        r"spans train and val of fold \d: image \d+ "
                                        r"\(clips/seq\d_f\d+\.jpg\) in fold\d_train.json"):
        check_fold_files(tmp_path / "out", coco, group_by=r"regex:^(\w+?)_")
    folds = split.make_folds(coco, TRASH, 3, 42)
    with pytest.raises(ParameterError, match=r"group 'seq\d' spans fold \d's train and val"):
        group_counts(folds, image_groups(coco, r"regex:^(\w+?)_"))


# --- near-duplicate pairs across folds ----------------------------------------------------------

def test_duplicate_pairs_across_folds_are_counted_and_limited(train, tmp_path):
    folds = split.make_folds(train, TRASH, 3, 42)
    write_folds(train, folds, tmp_path)
    val0 = folds[folds == 0].index.tolist()
    train0 = folds[folds != 0].index.tolist()
    pairs = pd.DataFrame({"image_a": [val0[0], val0[0], train0[0]],
                          "image_b": [train0[0], val0[1], train0[1]],
                          "file_a": ["a.jpg"] * 3, "file_b": ["b.jpg"] * 3})
    check = check_fold_files(tmp_path, train, duplicate_pairs=pairs)
    per_fold = duplicate_pairs_per_fold(pairs, folds).set_index("fold")
    assert check.set_index("fold")["duplicate_pairs"].tolist() == \
        per_fold["pairs_across"].tolist()
    assert per_fold.loc[0, "pairs_across"] == 1 and per_fold.loc[0, "pairs_in_val"] == 1
    assert check["duplicate_pairs"].sum() >= 1
    assert check_fold_files(tmp_path, train, duplicate_pairs=pairs,
                                  max_duplicate_pairs=2)["ok"].all()
    with pytest.raises(CocoError, match=r"fold 0 has 1 near-duplicate pairs across train and "
                                        r"val, more than max_duplicate_pairs=0; e\.g\. images"):
        check_fold_files(tmp_path, train, duplicate_pairs=pairs, max_duplicate_pairs=0)
    with pytest.raises(ParameterError, match="max_duplicate_pairs must be None or"):
        check_fold_files(tmp_path, train, duplicate_pairs=pairs, max_duplicate_pairs=-1)
    # papermill -r passes text: "None" reports only, "0" is a limit
    assert duplicate_pairs_per_fold(pairs, folds, "None").equals(per_fold.reset_index())
    with pytest.raises(CocoError, match="more than max_duplicate_pairs=0"):
        duplicate_pairs_per_fold(pairs, folds, "0")


# --- atomic fold sets --------------------------------------------------------------------------

def test_concurrent_splits_into_one_folder_leave_one_consistent_split(sample_root, tmp_path):
    import threading

    out = tmp_path / "splits"
    errors = []

    def worker(seed):
        try:
            for _ in range(4):
                split.split_file(sample_root / "train_all.json", out, n_splits=3 + seed % 2,
                                 seed=seed)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    coco = load_coco(sample_root / "train_all.json")
    check = check_fold_files(out, coco)
    assert check["ok"].all() and check["val_images"].sum() == len(coco.images)
    # the folder is exactly one of the two splits, fold files and folds.csv alike
    candidates = {}
    for seed in (1, 2):
        paths = split.split_file(sample_root / "train_all.json", tmp_path / f"s{seed}",
                                 n_splits=3 + seed % 2, seed=seed)
        candidates[seed] = {p.name: p.read_bytes() for p in paths}
    now = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert now in candidates.values()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_failed_write_leaves_the_previous_set(train, tmp_path, monkeypatch):
    import errno

    from segkit.core.errors import SegkitError

    out = tmp_path / "splits"
    before = {p.name: p.read_bytes()
              for p in write_folds(train, split.make_folds(train, TRASH, 3, 1), out)}
    (out / "fold_report.csv").write_text("kept\n")
    calls = []
    real_write_coco = write_coco

    def full_disk(data, path):  # the disk fills up at the third file
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_coco(data, path)

    monkeypatch.setattr(fold_sets, "write_coco", full_disk)
    with pytest.raises(SegkitError, match=r"cannot write the folds to .*splits: No space left on "
                                          r"device .*; the folder was left as it was"):
        write_folds(train, split.make_folds(train, TRASH, 4, 2), out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "fold_report.csv"}
    assert after == before
    assert (out / "fold_report.csv").read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".splits.lock", "splits"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_reports_beside_the_folds_survive_a_new_split(train, tmp_path, monkeypatch, exchange):
    if not exchange:  # systems without an atomic exchange: two renames under the lock
        monkeypatch.setattr(fold_sets, "_exchange", lambda a, b: False)
    out = tmp_path / "splits"
    write_folds(train, split.make_folds(train, TRASH, 3, 1), out)
    (out / "fold_report.csv").write_text("report\n")
    (out / "figures").mkdir()
    (out / "figures" / "a.png").write_bytes(b"png")
    write_folds(train, split.make_folds(train, TRASH, 3, 2), out)
    assert (out / "fold_report.csv").read_text() == "report\n"
    assert (out / "figures" / "a.png").read_bytes() == b"png"
    assert check_fold_files(out, train)["ok"].all()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".splits.lock", "splits"]


def test_unwritable_output_is_one_clear_error(train, tmp_path):
    import os

    from segkit.core.errors import SegkitError
    from segkit.folds import (
        write_folds,
    )

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SegkitError, match=r"cannot write the folds to .*file: it is a file"):
        write_folds(train, split.make_folds(train, TRASH, 3, 1), blocker)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
        with pytest.raises(SegkitError, match=r"cannot write the folds to .*ro: the folder is "
                                              r"read-only"):
            write_folds(train, split.make_folds(train, TRASH, 3, 1), out)
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_cli_split_group_by(sample_root, tmp_path, capsys):
    path = _grouped_copy(sample_root, tmp_path)
    out = tmp_path / "splits"
    assert main(["split", str(path), "--out", str(out), "--n-splits", "3",
                 "--group-by", "field:video_id"]) == 0
    assert "grouped by field:video_id" in capsys.readouterr().out
    assert check_fold_files(out, group_by="field:video_id")["ok"].all()
    assert main(["split", str(path), "--out", str(tmp_path / "x"), "--n-splits", "3",
                 "--group-by", "regex:("]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a valid regular expression" in err
    assert not (tmp_path / "x").exists()
