import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

import segkit.coco as coco_mod
from segkit.__main__ import main
from segkit.classes import TRASH
from segkit.coco import (
    cached_label_maps,
    check_coco,
    label_map,
    load_coco,
    rasterize,
    read_image,
    subset,
    write_coco,
)
from segkit.errors import CocoError
from tests.conftest import write_json


def test_largest_first_keeps_small_object_visible(tiny_coco, tmp_path):
    coco = load_coco(write_json(tmp_path / "a.json", tiny_coco))
    lab = label_map(coco, coco.images[0], TRASH)
    assert lab.dtype == np.uint8 and lab.shape == (6, 8)
    assert (lab[2:5, 2:5] == 9).all()  # Battery on top of General trash
    assert (lab == 1).sum() == 48 - 9


def test_uncompressed_rle_is_column_major(tiny_coco, tmp_path):
    coco = load_coco(write_json(tmp_path / "a.json", tiny_coco))
    lab = label_map(coco, coco.images[1], TRASH)
    assert (lab[:, 1] == 2).all() and (lab[:, [0, 2, 3]] == 0).all()


def test_matches_pycocotools_per_annotation_painting():
    """The vectorised decoder agrees with pycocotools' own decode on random overlapping masks."""
    rng = np.random.default_rng(1)
    h, w = 37, 53
    segs, classes, masks = [], [], []
    for k in range(25):
        m = np.zeros((h, w), np.uint8)
        if k % 3 == 0:  # polygons
            pts = rng.uniform(-0.5, [w, h], (int(rng.integers(3, 9)), 2))
            segs.append([pts.ravel().tolist()])
            rle = mask_utils.merge(mask_utils.frPyObjects(segs[-1], h, w))
        else:  # random blobs as compressed or uncompressed RLE
            c = rng.uniform(0, [w, h])
            yy, xx = np.mgrid[:h, :w]
            m = ((xx - c[0]) ** 2 / rng.uniform(4, 200) + (yy - c[1]) ** 2 / rng.uniform(4, 200)
                 < 1 + rng.normal(0, 0.3, (h, w))).astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(m))
            if k % 3 == 1:
                segs.append({"size": [h, w], "counts": rle["counts"].decode()})
            else:
                flat = m.ravel(order="F")
                change = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
                counts = np.diff(np.r_[0, change]).tolist()
                segs.append({"size": [h, w], "counts": counts})
        classes.append(int(rng.integers(1, 11)))
        masks.append(mask_utils.decode(rle))
    order = sorted(range(len(segs)), key=lambda i: -int(masks[i].sum()))
    expected = np.zeros((h, w), np.uint8)
    for i in order:
        expected[masks[i] > 0] = classes[i]
    assert (rasterize(segs, classes, h, w) == expected).all()


def test_empty_image_is_background():
    assert rasterize([], [], 4, 5).tolist() == np.zeros((4, 5)).tolist()


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("images"), "missing key 'images'"),
    (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 1"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "duplicate annotation id 10"),
    (lambda d: d["annotations"][0].update(image_id=77), "annotation 10 points at unknown image_id 77"),
    (lambda d: d["annotations"][0].update(category_id=5), "annotation 10 has unknown category_id 5"),
    (lambda d: d["annotations"][1].update(segmentation=[[1, 1, 2, 2]]), "annotation 11 .*3 are needed"),
    (lambda d: d["annotations"][1].update(segmentation=[[1, 1, 2, 2, 3]]), "annotation 11 .*odd number"),
    (lambda d: d["annotations"][1].update(segmentation=[[1, 1, 2, 2, 30, 3]]), "annotation 11 .*outside"),
    (lambda d: d["annotations"][2]["segmentation"].update(size=[6, 9]), "annotation 12 .*RLE size"),
    (lambda d: d["images"][0].pop("width"), "image 1 is missing width"),
])
def test_bad_files_name_file_and_entry(tiny_coco, tmp_path, change, message):
    change(tiny_coco)
    path = write_json(tmp_path / "bad.json", tiny_coco)
    with pytest.raises(CocoError, match=f"bad.json: .*{message}"):
        load_coco(path)


def test_missing_and_malformed_json(tmp_path):
    with pytest.raises(CocoError, match="nope.json: file not found"):
        load_coco(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(CocoError, match="broken.json: not valid JSON"):
        load_coco(tmp_path / "broken.json")


def test_slightly_off_image_points_warn(tiny_coco, tmp_path):
    tiny_coco["annotations"][1]["segmentation"] = [[2, 2, 8.5, 2, 5, 5]]
    coco = load_coco(write_json(tmp_path / "a.json", tiny_coco))
    assert len(coco.warnings) == 1 and "annotation 11" in coco.warnings[0]


def test_unknown_category_name(tiny_coco, tmp_path):
    tiny_coco["categories"][0]["name"] = "Rubbish"
    coco = load_coco(write_json(tmp_path / "a.json", tiny_coco))
    with pytest.raises(CocoError, match="a.json: category id 1 has unknown name 'Rubbish'"):
        label_map(coco, coco.images[0], TRASH)


def test_image_problems(sample_root, tmp_path):
    coco = load_coco(sample_root / "train_all.json")
    data = subset(coco, [coco.images[0]["id"], coco.images[1]["id"]])
    first = data["images"][0]
    small = cv2.resize(cv2.imread(str(sample_root / first["file_name"])), (50, 96))
    (tmp_path / "batch_01_vt").mkdir()
    cv2.imwrite(str(tmp_path / first["file_name"]), small)
    path = write_json(tmp_path / "x.json", data)
    problems, _ = check_coco(path, tmp_path)
    assert len(problems) == 2
    assert "is 50x96 but" in problems[0] and "says 96x96 (image id 0)" in problems[0]
    assert "image file missing (image id 1)" in problems[1]
    with pytest.raises(CocoError, match="image is 50x96 but the JSON says 96x96"):
        read_image(tmp_path, first)
    with pytest.raises(CocoError, match="0001.jpg: image file missing"):
        read_image(tmp_path, data["images"][1])


def test_cache_second_pass_is_a_read(sample_root, tmp_path, monkeypatch):
    coco = load_coco(sample_root / "train_all.json")
    first = cached_label_maps(coco, TRASH, tmp_path / "cache")
    lab = cv2.imread(str(first[coco.images[0]["id"]]), cv2.IMREAD_UNCHANGED)
    assert (lab == label_map(coco, coco.images[0], TRASH)).all()

    def fail(*a, **k):
        raise AssertionError("rasterised again")

    monkeypatch.setattr(coco_mod, "label_map", fail)
    assert cached_label_maps(coco, TRASH, tmp_path / "cache") == first


def test_cache_key_follows_content(sample_root, tmp_path):
    coco = load_coco(sample_root / "train_all.json")
    data = coco.to_dict()
    data["annotations"] = data["annotations"][1:]
    other = load_coco(write_json(tmp_path / "other.json", data))
    a = cached_label_maps(coco, TRASH, tmp_path / "c")
    b = cached_label_maps(other, TRASH, tmp_path / "c")
    assert a[0].parent != b[0].parent


def test_subset_and_write_are_deterministic(sample_root, tmp_path):
    coco = load_coco(sample_root / "train_all.json")
    ids = [coco.images[3]["id"], coco.images[1]["id"]]
    part = subset(coco, ids)
    assert [i["id"] for i in part["images"]] == sorted(ids, key=[i["id"] for i in coco.images].index)
    assert {a["image_id"] for a in part["annotations"]} <= set(ids)
    write_coco(part, tmp_path / "a.json")
    write_coco(part, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert load_coco(tmp_path / "a.json").images == part["images"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_check_coco(sample_root, tiny_coco, tmp_path, capsys):
    assert main(["check-coco", str(sample_root / "train_all.json"), "--data-root",
                 str(sample_root)]) == 0
    tiny_coco["annotations"][0]["image_id"] = 99
    tiny_coco["annotations"][1]["category_id"] = 42
    path = write_json(tmp_path / "bad.json", tiny_coco)
    assert main(["check-coco", str(path)]) == 2
    out = capsys.readouterr().out
    assert "unknown image_id 99" in out and "unknown category_id 42" in out


def test_cli_error_exit_code(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    assert main(["check-coco", str(tmp_path / "bad.json")]) == 2
