import json
import shutil
import time

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

import segkit.coco.files as coco_mod
from segkit.coco.checks import validate
from segkit.coco.files import (
    cached_label_maps,
    check_coco,
    check_image_files,
    check_images,
    check_same_categories,
    label_map,
    load_coco,
    rasterize,
    read_image,
    subset,
    write_coco,
)
from segkit.core.classes import TRASH, ClassTable
from segkit.core.errors import CocoError
from segkit.flow.cli import main
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


# ---------------------------------------------------------------------------------------------
# Bad input (issue 15): every case refused with a CocoError naming the file and the entry
# ---------------------------------------------------------------------------------------------

def _rle_counts(h=6, w=8) -> str:
    """A valid compressed RLE string for an h x w image (a 3x3 block)."""
    m = np.zeros((h, w), np.uint8, order="F")
    m[1:4, 2:5] = 1
    return mask_utils.encode(m)["counts"].decode()


def _set_rle(counts):
    return lambda d: d["annotations"][2].update(segmentation={"size": [6, 8], "counts": counts})


def _poly(*values):
    return lambda d: d["annotations"][1].update(segmentation=[list(values)])


@pytest.mark.parametrize("change, message", [
    # non-finite and absurd numbers
    (_poly(2, 2, float("nan"), 2, 5, 5), r"annotation 11 \(image 1\): polygon 0 holds a "
                                          "non-finite coordinate"),
    (_poly(2, 2, float("inf"), 2, 5, 5), "annotation 11 .*non-finite"),
    (_poly(2, 2, 1e308, 2, 5, 5), "annotation 11 .*reaches 1e\\+308px outside the 8x6 image"),
    (_poly(2, 2, 10 ** 400, 2, 5, 5), "annotation 11 .*not a flat list of numbers"),
    (_poly(2, 2, True, 2, 5, 5), "annotation 11 .*polygon 0 is not a flat list of numbers "
                                 r"\(True\)"),
    (lambda d: d["annotations"][0].update(bbox=[0, 0, float("nan"), 3]),
     "annotation 10 .*bbox must be 4 finite numbers"),
    (lambda d: d["annotations"][0].update(bbox=[5, 5, -2, 1]),
     "annotation 10 .*negative width or height"),
    (lambda d: d["annotations"][0].update(bbox=[0, 0, 1e308, 1]),
     "annotation 10 .*lies far outside"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2]), r"annotation 10 .*bbox must be \[x, y"),
    (lambda d: d["annotations"][0].update(area=float("inf")), "annotation 10 .*area must be"),
    (lambda d: d["annotations"][0].update(area=-4), "annotation 10 .*area must be"),
    (lambda d: d["annotations"][0].update(area="12"), "annotation 10 .*area must be"),
    (lambda d: d["images"][0].update(width=True), "image 1 has width/height True"),
    (lambda d: d["images"][0].update(width=1e308), "image 1 has width/height 1e.308"),
    (lambda d: d["images"][0].update(width=10 ** 9), "image 1 has width/height .*larger than"),
    (lambda d: d["annotations"][0].update(iscrowd=2), "annotation 10 .*iscrowd must be 0 or 1"),
    # RLE decode-checked against its declared size
    (_set_rle(_rle_counts()[:-1]), "annotation 12 .*(truncated|decode to)"),
    (_set_rle(_rle_counts() + "0"), "annotation 12 .*decode to 48 pixels|annotation 12 .*"
                                    "decode to \\d+ pixels"),
    (_set_rle("7 3$"), "annotation 12 .*unexpected character ' ' at position 1"),
    (_set_rle("\u00e9" + _rle_counts()), "annotation 12 .*non-ASCII"),
    (_set_rle(["6", "6", "36"]), "annotation 12 .*uncompressed RLE counts must be integers"),
    (_set_rle([6, 6, 35]), "annotation 12 .*do not add up to 6x8 = 48"),
    (_set_rle([6, -6, 48]), "annotation 12 .*negative run"),
    (_set_rle(""), "annotation 12 .*empty"),
    (_set_rle("ooooooooooo0"), "annotation 12 .*impossibly long run"),
    (_set_rle(None), "annotation 12 .*'counts' must be a string or a list"),
    (lambda d: d["annotations"][2]["segmentation"].update(size=[6, True]),
     "annotation 12 .*RLE without a \\[height, width\\]"),
    # wrong field types
    (lambda d: d["images"][0].update(id=[1]), r"images\[0\] has id \[1\]: image ids are"),
    (lambda d: d["images"][0].update(file_name=None), "image 1: file_name must be a non-empty "
                                                      "string, got None"),
    (lambda d: d["images"][0].update(file_name=""), "image 1: file_name must be a non-empty"),
    (lambda d: d["annotations"][0].update(id="10"), r"annotations\[0\] has id '10'"),
    (lambda d: d["annotations"][0].update(image_id=[1]), r"annotation 10 points at unknown "
                                                         r"image_id \[1\]"),
    (lambda d: d["annotations"][0].update(category_id=None), "annotation 10 has unknown "
                                                             "category_id None"),
    (lambda d: d["annotations"].append(7), r"annotations\[3\] must be an object, got int"),
    (lambda d: d["images"].append("c.jpg"), r"images\[2\] must be an object, got str"),
    (lambda d: d["categories"][0].update(id=1.0), r"categories\[0\] has id 1.0"),
    (lambda d: d["categories"][0].update(name=""), "category 1 has name ''"),
    (lambda d: d["annotations"][0].update(segmentation={}), "annotation 10 .*RLE without"),
    (lambda d: d["annotations"][0].update(segmentation=[]), "annotation 10 .*segmentation must be"),
    (lambda d: d["images"][1].update(file_name="a.jpg"), "image 2 has the file_name 'a.jpg' "
                                                         "of image 1"),
    # outside the data root
    (lambda d: d["images"][0].update(file_name="../secret.jpg"), "image 1: file_name "
                                                                 "'../secret.jpg' leads out"),
    (lambda d: d["images"][0].update(file_name="/etc/x.jpg"), "image 1: file_name '/etc/x.jpg' "
                                                              "is an absolute path"),
    (lambda d: d["images"][0].update(file_name="imgs/../../x.jpg"), "leads out of the data"),
    # categories that would silently change the class table
    (lambda d: d["categories"][1].update(name="paper"), "category 2 is named 'paper', the "
                                                        "class table's 'Paper'"),
    (lambda d: d["categories"].append({"id": 0, "name": "background"}),
     "category 0 is named 'background'"),
])
def test_bad_input_is_refused_naming_file_and_entry(tiny_coco, tmp_path, change, message):
    change(tiny_coco)
    path = write_json(tmp_path / "bad.json", tiny_coco)
    with pytest.raises(CocoError, match=f"bad.json: .*{message}"):
        load_coco(path)
    problems, _ = check_coco(path)  # check-coco lists it, never crashes
    assert problems and all(p.startswith(str(path)) for p in problems)


def test_a_valid_compressed_rle_is_accepted_and_painted(tiny_coco, tmp_path):
    tiny_coco["annotations"][2]["segmentation"] = {"size": [6, 8], "counts": _rle_counts()}
    coco = load_coco(write_json(tmp_path / "a.json", tiny_coco))
    lab = label_map(coco, coco.images[1], TRASH)
    assert (lab[1:4, 2:5] == 2).all() and (lab == 2).sum() == 9


def test_outside_root_needs_the_explicit_option(tiny_coco, tmp_path):
    tiny_coco["images"][0]["file_name"] = "../elsewhere/a.jpg"
    tiny_coco["images"][1]["file_name"] = str(tmp_path / "b.jpg")
    path = write_json(tmp_path / "a.json", tiny_coco)
    with pytest.raises(CocoError, match="leads out of the data root"):
        load_coco(path)
    assert load_coco(path, allow_outside_root=True).images[0]["file_name"] == "../elsewhere/a.jpg"
    assert check_coco(path, allow_outside_root=True)[0] == []


def test_missing_annotations_an_error_for_training_a_warning_for_check_coco(tiny_coco, tmp_path):
    del tiny_coco["annotations"]
    path = write_json(tmp_path / "test.json", tiny_coco)
    assert load_coco(path).annotations == []
    with pytest.raises(CocoError, match="test.json: no 'annotations' key: a file to train on"):
        load_coco(path, require_annotations=True)
    problems, warnings = check_coco(path)
    assert problems == [] and any("no 'annotations' key" in w for w in warnings)
    tiny_coco["annotations"] = []
    with pytest.raises(CocoError, match="an empty 'annotations' list"):
        load_coco(write_json(path, tiny_coco), require_annotations=True)


def test_category_decisions(tiny_coco, tmp_path):
    """Categories map by name: id 0 is an id like any other (TACO uses it); an explicit
    Background category paints class 0; iscrowd=1 is painted like any annotation."""
    tiny_coco["categories"] += [{"id": 0, "name": "Background"}, {"id": 5, "name": "Metal"}]
    tiny_coco["annotations"][1].update(category_id=0)              # the square: Background
    tiny_coco["annotations"][2].update(category_id=5, iscrowd=1)   # column 1: Metal, crowd
    coco = load_coco(write_json(tmp_path / "a.json", tiny_coco))
    assert (label_map(coco, coco.images[0], TRASH)[2:5, 2:5] == 0).all()
    assert (label_map(coco, coco.images[1], TRASH)[:, 1] == 4).all()
    own = {"images": tiny_coco["images"], "annotations": [],
           "categories": [{"id": 0, "name": "Aluminium foil"}, {"id": 1, "name": "Battery"}]}
    assert load_coco(write_json(tmp_path / "own.json", own)).categories[0]["id"] == 0


def test_a_stray_name_among_trash_classes_is_refused(tiny_coco, tmp_path):
    tiny_coco["categories"] = [{"id": i, "name": n} for i, n in [
        (1, "General trash"), (2, "Paper"), (9, "Battery"), (3, "Paper pack"), (4, "Metal"),
        (6, "Plastik")]]
    path = write_json(tmp_path / "a.json", tiny_coco)
    with pytest.raises(CocoError, match=r"a.json: categories \['Plastik'\] are not trash classes"):
        load_coco(path)
    table = ClassTable.from_categories(tiny_coco["categories"])
    assert load_coco(path, classes=table).categories[-1]["name"] == "Plastik"
    with pytest.raises(CocoError, match=r"categories \['Plastik'\] are not in the class table"):
        load_coco(path, classes=TRASH)


def test_check_same_categories(sample_root, tmp_path):
    files = [sample_root / n for n in ("train.json", "val.json", "test.json")]
    assert [c["name"] for c in check_same_categories(files)] == list(TRASH.names[1:])
    data = json.loads(files[1].read_text())
    data["categories"] = data["categories"][:-1]
    data["annotations"] = [a for a in data["annotations"]
                           if a["category_id"] != data["categories"][-1]["id"] + 1]
    other = write_json(tmp_path / "val.json", data)
    with pytest.raises(CocoError, match=r"val.json: categories differ from .*train.json's "
                                        r"\(missing \['Clothing'\]\)"):
        check_same_categories([files[0], other, files[2]])
    swapped = json.loads(files[2].read_text())
    swapped["categories"][0]["id"], swapped["categories"][1]["id"] = 2, 1
    with pytest.raises(CocoError, match="same names in another id order"):
        check_same_categories([files[0], write_json(tmp_path / "test.json", swapped)])


def test_check_image_files_lists_the_first_bad_images(sample_root, tmp_path):
    coco = load_coco(sample_root / "train_all.json")
    check_image_files(coco, sample_root)  # all fine: no error
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    images = coco.images
    (root / images[0]["file_name"]).unlink()                                  # missing
    jpeg = (root / images[1]["file_name"]).read_bytes()
    (root / images[1]["file_name"]).write_bytes(jpeg[: len(jpeg) // 2])       # truncated
    (root / images[2]["file_name"]).write_bytes(b"not an image")              # unreadable
    small = cv2.imread(str(root / images[3]["file_name"]))[:50]
    cv2.imwrite(str(root / images[3]["file_name"]), small)                    # another size
    with pytest.raises(CocoError) as info:
        check_image_files(coco, root, limit=3)
    text = str(info.value)
    assert text.startswith(f"{coco.path}: 4 of its {len(images)} images cannot be used")
    assert f"{images[0]['file_name']}: image file missing (image id {images[0]['id']})" in text
    assert f"{images[1]['file_name']}: image file truncated" in text
    assert f"{images[2]['file_name']}: image file unreadable" in text
    assert "... and 1 more" in text
    problems = check_images(coco, root)
    assert len(problems) == 4 and "is 96x50 but" in problems[3]


def test_validation_of_a_competition_sized_file_is_fast(tmp_path):
    """3,300 images, 26,400 polygons and 3,300 compressed RLEs: well under a second."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    yy, xx = np.mgrid[:512, :512]
    blob = ((yy - 200) ** 2 / 80 ** 2 + (xx - 300) ** 2 / 120 ** 2 < 1).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(blob))["counts"].decode()
    for i in range(3300):
        images.append({"id": i, "file_name": f"b/{i:04d}.jpg", "width": 512, "height": 512})
        for k in range(8):
            pts = rng.uniform(0, 512, 40).round(1).tolist()
            anns.append({"id": 9 * i + k, "image_id": i, "category_id": 1 + k,
                         "segmentation": [pts], "area": 100.0, "bbox": [1, 2, 30, 40],
                         "iscrowd": 0})
        anns.append({"id": 9 * i + 8, "image_id": i, "category_id": 9, "iscrowd": 1,
                     "segmentation": {"size": [512, 512], "counts": rle}})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": k, "name": TRASH.names[k]} for k in range(1, 11)]}
    start = time.perf_counter()
    problems, warnings = validate(data, "big.json")
    assert problems == [] and warnings == []
    assert time.perf_counter() - start < 2.0  # about 0.2 s on one core
