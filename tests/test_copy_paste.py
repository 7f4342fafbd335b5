"""segkit.data.copy_paste: pasted instances, cut labels, determinism, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from segkit.coco.files import label_map, load_coco, rasterize, read_image, write_coco
from segkit.core.classes import TRASH
from segkit.core.errors import ParameterError
from segkit.data import copy_paste as cp
from segkit.data import owner_map, visible_areas
from segkit.data.visible_masks import visible_mask
from segkit.flow.cli import main
from segkit.viz import show_copy_paste


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def train(sample_root):
    return load_coco(sample_root / "train_all.json")


@pytest.fixture(scope="module")
def generated(train, sample_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("cp")
    before = tree_digest(sample_root)
    result = cp.copy_paste(train, sample_root, name="run", images_per_class=3,
                           objects_per_image=3, seed=5, out_root=out)
    assert tree_digest(sample_root) == before  # the source data is only read
    return result


def test_output_layout_and_paths(generated):
    folder = generated.data_root
    assert generated.coco_file == folder / "annotations.json"
    coco = load_coco(generated.coco_file)
    assert len(coco.images) == 6
    names = sorted(str(p.relative_to(folder)) for p in (folder / "images").iterdir())
    assert names == sorted(img["file_name"] for img in coco.images)
    for img in coco.images:
        assert read_image(folder, img).shape == (img["height"], img["width"], 3)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left
    assert (folder / "pasted.csv").read_text().splitlines()[0].startswith("image_id,file_name")


def test_ids_continue_after_the_source(generated, train):
    coco = load_coco(generated.coco_file)
    assert min(i["id"] for i in coco.images) == max(i["id"] for i in train.images) + 1
    assert min(a["id"] for a in coco.annotations) == max(a["id"] for a in train.annotations) + 1


def test_labels_equal_the_target_overpainted_by_the_pasted_objects(generated, train):
    coco = load_coco(generated.coco_file)
    pasted = generated.pasted
    assert set(pasted["class"]) == {"Battery", "Clothing"}
    ann_by_id = {a["id"]: a for a in coco.annotations}
    for img in coco.images:
        rows = pasted[pasted["image_id"] == img["id"]]
        assert len(rows) == 3 and rows["target_image_id"].nunique() == 1
        target = train.image_by_id[int(rows["target_image_id"].iloc[0])]
        expected = label_map(train, target, TRASH).copy()
        cls = TRASH.index(rows["class"].iloc[0])
        union = np.zeros_like(expected, bool)
        for ann_id in rows["annotation_id"]:
            if ann_id >= 0:
                ann = ann_by_id[int(ann_id)]
                assert ann["category_id"] == cls  # trash ids equal indices
                h, w = img["height"], img["width"]
                x, y, bw, bh = ann["bbox"]
                assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h  # inside the image
                m = rasterize([ann["segmentation"]], [1], h, w) == 1
                union |= m
                assert ann["area"] == int(m.sum())
        assert union.any()
        expected[union] = cls
        np.testing.assert_array_equal(label_map(coco, img, TRASH), expected)


def test_picture_changes_only_where_objects_were_pasted(generated, train, sample_root):
    coco = load_coco(generated.coco_file)
    img = coco.images[-1]  # a Clothing image: large pasted objects
    rows = generated.pasted[generated.pasted["image_id"] == img["id"]]
    target = train.image_by_id[int(rows["target_image_id"].iloc[0])]
    new = read_image(generated.data_root, img).astype(int)
    old = read_image(sample_root, target).astype(int)
    label = label_map(coco, img, TRASH)
    changed = label != label_map(train, target, TRASH)
    assert changed.any()
    away = ~cv2.dilate(changed.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert np.abs(new - old)[away].mean() < 4  # JPEG noise only
    assert np.abs(new - old)[changed].mean() > 10


def test_same_seed_same_bytes_other_seed_other_images(train, sample_root, tmp_path):
    kwargs = dict(images_per_class=2, objects_per_image=2, out_root=tmp_path)
    a = cp.copy_paste(train, sample_root, name="a", seed=1, **kwargs)
    b = cp.copy_paste(train, sample_root, name="b", seed=1, **kwargs)
    c = cp.copy_paste(train, sample_root, name="c", seed=2, **kwargs)
    assert tree_digest(a.data_root) == tree_digest(b.data_root)
    assert tree_digest(a.data_root) != tree_digest(c.data_root)


def test_rerun_replaces_the_folder_whole(train, sample_root, tmp_path):
    cp.copy_paste(train, sample_root, name="x", images_per_class=3, out_root=tmp_path)
    result = cp.copy_paste(train, sample_root, name="x", classes=["Clothing"],
                           images_per_class=1, out_root=tmp_path)
    assert sorted(p.name for p in (result.data_root / "images").iterdir()) == ["00000.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def tiny_scene(root: Path) -> Path:
    """A target 20x20 image (a paper strip on top, a 2x2 metal bit in the middle) and a
    source image whose 18x18 Clothing square covers almost everything when pasted."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("target.png", "source.png"):
        cv2.imwrite(str(root / name), rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    data = {
        "images": [{"id": 1, "file_name": "target.png", "width": 20, "height": 20},
                   {"id": 2, "file_name": "source.png", "width": 20, "height": 20}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2,
             "segmentation": [[0, 0, 20, 0, 20, 4, 0, 4]]},  # rows 0-3: Paper
            {"id": 2, "image_id": 1, "category_id": 4,
             "segmentation": [[9, 9, 11, 9, 11, 11, 9, 11]]},  # 2x2 Metal
            {"id": 3, "image_id": 2, "category_id": 10,
             "segmentation": [[1, 1, 19, 1, 19, 19, 1, 19]]},  # 18x18 Clothing
        ],
        "categories": [{"id": 2, "name": "Paper"}, {"id": 4, "name": "Metal"},
                       {"id": 10, "name": "Clothing"}],
    }
    return write_coco(data, root / "scene.json")


def test_covered_annotations_are_cut_or_dropped(tmp_path):
    coco = load_coco(tiny_scene(tmp_path / "data"))
    result = cp.copy_paste(coco, tmp_path / "data", classes=["Clothing"], images_per_class=1,
                           objects_per_image=1, scale_range=(1, 1), rotation_range=(0, 0),
                           out_root=tmp_path / "out")
    out = load_coco(result.coco_file)
    assert int(result.pasted["target_image_id"].iloc[0]) == 1  # the background-heavy one
    by_cat = {a["category_id"]: a for a in out.annotations}
    assert sorted(by_cat) == [2, 10]  # the metal bit lay under the pasted square: dropped
    assert by_cat[10]["area"] == 18 * 18
    assert 0 < by_cat[2]["area"] < 80  # the paper strip lost what the square covers
    label = label_map(out, out.images[0], TRASH)
    assert (label == 10).sum() == 18 * 18 and (label == 4).sum() == 0
    assert (label == 2).sum() == by_cat[2]["area"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"classes": ["Batery"]}, r"unknown class 'Batery' in classes; allowed: General trash, "
                              r"Paper, .*Battery, Clothing"),
    ({"classes": ["Background"]}, "unknown class 'Background'"),
    ({"classes": "Battery"}, "classes must be a non-empty list"),
    ({"images_per_class": {"Metal": 3}}, r"images_per_class names \['Metal'\].*allowed: "
                                         r"Battery, Clothing"),
    ({"images_per_class": -1}, "images_per_class for 'Battery' must be an integer >= 0"),
    ({"objects_per_image": 0}, "objects_per_image must be an integer >= 1"),
    ({"scale_range": (0, 1)}, "scale_range must satisfy 0 < low <= high"),
    ({"rotation_range": (30, -30)}, "rotation_range must satisfy"),
    ({"name": "../escape"}, "name must be a plain folder name"),
    ({"seed": -3}, "seed must be a non-negative integer"),
])
def test_bad_parameters_raise_before_writing(train, sample_root, tmp_path, kwargs, message):
    with pytest.raises(ParameterError, match=message):
        cp.copy_paste(train, sample_root, out_root=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_class_without_instances_is_named_with_the_allowed(tmp_path):
    coco = load_coco(tiny_scene(tmp_path / "data"))
    with pytest.raises(ParameterError, match=r"no instance of 'Battery'.*classes with "
                                             r"annotations there: Paper, Metal, Clothing"):
        cp.copy_paste(coco, tmp_path / "data", classes=["Clothing", "Battery"],
                      out_root=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_source_image_leaves_nothing_behind(tmp_path):
    scene = tiny_scene(tmp_path / "data")
    (tmp_path / "data" / "source.png").unlink()
    from segkit.core.errors import CocoError

    with pytest.raises(CocoError, match="source.png: image file missing"):
        cp.copy_paste(load_coco(scene), tmp_path / "data", classes=["Clothing"],
                      images_per_class=1, out_root=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_class_counts_before_and_after(generated, train):
    table = cp.class_counts(train, load_coco(generated.coco_file), TRASH)
    assert (table["annotations_after"] == table["annotations_before"]
            + table["annotations_added"]).all()
    assert table.loc["Battery", "annotations_added"] >= 1
    assert table.loc["Battery", "pixel_share_after"] > table.loc["Battery", "pixel_share_before"]
    assert table["pixel_share_after"].sum() == pytest.approx(1.0)


def test_cli_copy_paste(sample_root, tmp_path, capsys):
    args = ["copy-paste", str(sample_root / "train_all.json"), "--data-root", str(sample_root),
            "--images-per-class", "Clothing=2", "--classes", "Clothing", "--out-root",
            str(tmp_path)]
    assert main(args) == 0
    coco = json.loads((tmp_path / "default" / "annotations.json").read_text())
    assert len(coco["images"]) == 2
    assert main(args[:-2] + ["--classes", "Sock", "--out-root", str(tmp_path / "bad")]) == 2
    assert "unknown class 'Sock'" in capsys.readouterr().err


def test_show_copy_paste_shows_target_and_result(generated, train, sample_root):
    fig = show_copy_paste(train, sample_root, generated, n=2)
    assert len(fig.axes) == 8
    assert [ax.get_title() for ax in fig.axes[:4]] == ["target", "target labels", "pasted",
                                                       "pasted labels"]
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Battery" in names
    with pytest.raises(ParameterError, match="n must be at least 1"):
        show_copy_paste(train, sample_root, generated, n=0)


def test_visible_parts_agree_with_the_label_map(train):
    for image in train.images[:8]:
        anns = train.annotations_by_image[image["id"]]
        h, w = image["height"], image["width"]
        owner, masks = owner_map(anns, h, w)
        assert masks.shape == (h, w, len(anns))
        label = label_map(train, image, TRASH)
        painted = np.zeros((h, w), np.uint8)
        for k, ann in enumerate(anns):
            painted[owner == k] = ann["category_id"]  # trash ids equal indices
        np.testing.assert_array_equal(painted, label)
        areas = visible_areas(anns, h, w)
        for k in range(len(anns)):
            assert areas[k] == (owner == k).sum()
            np.testing.assert_array_equal(visible_mask(anns, k, h, w), owner == k)


def test_owner_map_with_more_than_255_annotations():
    rng = np.random.default_rng(0)
    anns = []
    for _ in range(300):  # random overlapping boxes on a 40x40 image
        x, y = rng.integers(0, 36, 2)
        bw, bh = rng.integers(1, 5, 2)
        anns.append({"segmentation": [[int(x), int(y), int(x + bw), int(y), int(x + bw),
                                       int(y + bh), int(x), int(y + bh)]]})
    owner, masks = owner_map(anns, 40, 40)
    expected = np.full((40, 40), -1)
    areas = masks.reshape(-1, 300).sum(0)
    for k in np.argsort(-areas, kind="stable"):  # paint largest first
        expected[masks[:, :, k].astype(bool)] = k
    np.testing.assert_array_equal(owner, expected)
    assert owner.max() > 255
