"""segkit.data.near_duplicates: perceptual hashes, cache, pairs, clusters, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from segkit.coco.files import load_coco
from segkit.core.errors import CocoError, ParameterError
from segkit.data import near_duplicates as nd
from segkit.flow.cli import main


def picture(seed: int, size: int = 160) -> np.ndarray:
    """A distinct synthetic picture: smooth colour field, shapes, noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(5):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        a, b = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
        cv2.rectangle(image, a, b, color, -1)
        cv2.circle(image, b, int(rng.integers(size // 16, size // 5)), color[::-1], -1)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def write_set(root: Path, pictures: dict[str, np.ndarray], quality: dict | None = None) -> Path:
    """Write the pictures as JPEGs under root/images and a COCO file listing them."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for k, (name, image) in enumerate(pictures.items()):
        q = (quality or {}).get(name, 92)
        cv2.imwrite(str(root / "images" / name), image, [cv2.IMWRITE_JPEG_QUALITY, q])
        images.append({"id": 100 + k, "file_name": f"images/{name}",
                       "height": image.shape[0], "width": image.shape[1]})
    path = root / "train_all.json"
    path.write_text(json.dumps({"images": images, "annotations": [],
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """10 distinct pictures, and picture 0 shifted by 3 px right and 2 px up (edges
    replicated), rescaled to 0.8x and recompressed at quality 40."""
    root = tmp_path_factory.mktemp("twins")
    base = picture(0)
    pictures = {f"p{k:02d}.jpg": picture(k) for k in range(10)}
    shift = np.float32([[1, 0, 3], [0, 1, -2]])
    pictures["p00_shifted.jpg"] = cv2.warpAffine(base, shift, base.shape[1::-1],
                                                 borderMode=cv2.BORDER_REPLICATE)
    pictures["p00_small.jpg"] = cv2.resize(base, (128, 128), interpolation=cv2.INTER_AREA)
    pictures["p00_recompressed.jpg"] = base
    return write_set(root, pictures, {"p00_recompressed.jpg": 40})


def test_variants_of_one_picture_are_found_and_distinct_pictures_are_not(twins):
    coco = load_coco(twins)
    pairs = nd.near_duplicates(coco, twins.parent)
    family = {"images/p00.jpg", "images/p00_shifted.jpg", "images/p00_small.jpg",
              "images/p00_recompressed.jpg"}
    found = {frozenset(p) for p in zip(pairs["file_a"], pairs["file_b"])}
    assert found == {frozenset((a, b)) for a in family for b in family if a < b}
    assert (pairs[["phash_distance", "dhash_distance"]] <= nd.DEFAULT_THRESHOLD).all().all()
    table = nd.clusters(pairs)
    assert table["cluster"].tolist() == [0] * 4 and set(table["file_name"]) == family
    assert table["size"].tolist() == [4] * 4
    # the distinct pictures are far apart
    hashes = nd.hash_images(coco, twins.parent)
    distinct = hashes[~hashes["file_name"].str.contains("_")]
    p = distinct["phash"].to_numpy(np.uint64)
    distances = np.bitwise_count(p[:, None] ^ p[None])[np.triu_indices(len(p), 1)]
    assert distances.min() > 2 * nd.DEFAULT_THRESHOLD


def test_pairs_equal_a_plain_double_loop():
    rng = np.random.default_rng(0)
    n = 300
    base = rng.integers(0, 2**63, n // 3, dtype=np.uint64)
    flips = lambda k: np.uint64(sum(1 << int(b) for b in rng.choice(64, k, replace=False)))  # noqa: E731
    phash = np.concatenate([base, [b ^ flips(rng.integers(0, 14)) for b in base],
                            rng.integers(0, 2**63, n - 2 * len(base), dtype=np.uint64)])
    dhash = phash ^ np.array([flips(rng.integers(0, 4)) for _ in phash], np.uint64)
    hashes = pd.DataFrame({"file_name": [f"{i}.jpg" for i in range(n)], "phash": phash,
                           "dhash": dhash}, index=pd.Index(np.arange(n) * 2, name="image_id"))
    pairs = nd.find_pairs(hashes, 8)
    expected = [(2 * i, 2 * j) for i in range(n) for j in range(i + 1, n)
                if bin(int(phash[i]) ^ int(phash[j])).count("1") <= 8
                and bin(int(dhash[i]) ^ int(dhash[j])).count("1") <= 8]
    assert list(zip(pairs["image_a"], pairs["image_b"])) == expected
    assert len(expected) > 20


def test_second_call_reads_the_cache_and_a_changed_file_is_hashed_again(twins, monkeypatch):
    coco = load_coco(twins)
    first = nd.hash_images(coco, twins.parent)
    calls = []
    real = nd.hash_file
    monkeypatch.setattr(nd, "hash_file", lambda path: calls.append(path) or real(path))
    assert nd.hash_images(coco, twins.parent).equals(first)
    assert calls == []
    changed = twins.parent / "images" / "p03.jpg"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert nd.hash_images(coco, twins.parent).equals(first)  # same content, same hash
    assert [Path(p).name for p in calls] == ["p03.jpg"]
    calls.clear()
    nd.hash_images(coco, twins.parent, cache=False)
    assert len(calls) == len(coco.images)


def test_two_processes_give_the_same_hashes(tmp_path):
    path = write_set(tmp_path, {f"q{k:03d}.jpg": picture(k, 48) for k in range(70)})
    coco = load_coco(path)
    one = nd.hash_images(coco, tmp_path, cache=False, processes=1)
    two = nd.hash_images(coco, tmp_path, cache=False, processes=2)
    assert one.equals(two) and len(one) == 70
    assert nd.find_pairs(one).equals(nd.find_pairs(two))


def test_missing_and_unreadable_images_are_named(twins, tmp_path):
    data = json.loads(twins.read_text())
    data["images"][2]["file_name"] = "images/gone.jpg"
    path = tmp_path / "missing.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CocoError, match=r"images/gone.jpg: image file missing \(image id 102"):
        nd.hash_images(load_coco(path), twins.parent)
    root = tmp_path / "broken"
    (root / "images").mkdir(parents=True)
    (root / "images" / "bad.jpg").write_bytes(b"not a picture")
    data = {"images": [{"id": 7, "file_name": "images/bad.jpg", "width": 4, "height": 4}],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    (root / "a.json").write_text(json.dumps(data))
    with pytest.raises(CocoError, match=r"bad.jpg: image file unreadable \(image id 7"):
        nd.hash_images(load_coco(root / "a.json"), root)


@pytest.mark.parametrize("threshold", [-1, 64, 2.5, True])
def test_threshold_is_checked(twins, threshold):
    hashes = nd.hash_images(load_coco(twins), twins.parent)
    with pytest.raises(ParameterError, match="threshold must be an integer"):
        nd.find_pairs(hashes, threshold)


def test_no_pairs_gives_empty_tables(twins):
    hashes = nd.hash_images(load_coco(twins), twins.parent)
    pairs = nd.find_pairs(hashes, 0)
    assert list(pairs.columns) == nd.PAIR_COLUMNS and pairs.empty
    assert nd.clusters(pairs).empty


def test_cluster_figure(twins):
    import matplotlib

    matplotlib.use("Agg")
    coco = load_coco(twins)
    table = nd.clusters(nd.near_duplicates(coco, twins.parent))
    fig = nd.plot_clusters(twins.parent, coco, table)
    assert len([ax for ax in fig.axes if ax.images]) == 4
    assert nd.plot_clusters(twins.parent, coco, table.iloc[0:0]) is not None


def test_cli_duplicates(twins, tmp_path, capsys):
    assert main(["duplicates", str(twins), "--data-root", str(twins.parent)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("6 near-duplicate pairs (both hashes within 10 bits) in 1 clusters "
                              "among 13 images")
    assert len(out) == 7 and "images/p00.jpg" in out[0]
    assert main(["duplicates", str(twins)]) == 0  # the data root defaults to the file's folder
    capsys.readouterr()
    for argv, message in [
        (["duplicates", str(tmp_path / "none.json")], "none.json"),
        (["duplicates", str(twins), "--data-root", str(tmp_path)], "image file missing"),
        (["duplicates", str(twins), "--threshold", "99"], "threshold must be an integer"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_same_images_same_pairs(twins):
    coco = load_coco(twins)
    a = nd.near_duplicates(coco, twins.parent, cache=False)
    b = nd.near_duplicates(coco, twins.parent)
    assert a.to_csv(index=False) == b.to_csv(index=False)
