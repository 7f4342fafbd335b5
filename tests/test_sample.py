import hashlib

from segkit.coco.files import check_coco, label_map, load_coco, read_image
from segkit.core.classes import TRASH
from segkit.data.sample import make_sample


def _digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_sample_layout_and_validity(sample_root):
    for name in ("train_all.json", "train.json", "val.json", "test.json"):
        problems, _ = check_coco(sample_root / name, sample_root)
        assert problems == [], problems
    coco = load_coco(sample_root / "train_all.json")
    assert coco.images[0]["file_name"].startswith("batch_0")
    assert len(coco.images) == 24 and load_coco(sample_root / "test.json").annotations == []
    train, val = load_coco(sample_root / "train.json"), load_coco(sample_root / "val.json")
    assert {i["id"] for i in train.images} | {i["id"] for i in val.images} == \
        {i["id"] for i in coco.images}
    img = coco.images[0]
    assert read_image(sample_root, img).shape == (96, 96, 3)
    assert label_map(coco, img, TRASH).max() > 0


def test_sample_is_deterministic(tmp_path):
    a = make_sample(tmp_path / "a", n_train=4, n_test=2, size=64, seed=3)
    b = make_sample(tmp_path / "b", n_train=4, n_test=2, size=64, seed=3)
    c = make_sample(tmp_path / "c", n_train=4, n_test=2, size=64, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_sample_has_all_classes_with_rare_ones_rare(tmp_path):
    root = make_sample(tmp_path / "s", n_train=80, n_test=2, size=64, seed=0)
    coco = load_coco(root / "train_all.json")
    counts = {c: 0 for c in range(1, 11)}
    for a in coco.annotations:
        counts[a["category_id"]] += 1
    assert all(v > 0 for v in counts.values()), counts
    assert counts[9] < counts[1] / 3 and counts[10] < counts[1] / 3
