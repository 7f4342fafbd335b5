"""Near-duplicate images: perceptual hashes (ImageHash), pairs within a Hamming distance, clusters.

A validation image whose near-twin (the same scene a frame later, a re-upload, a resized or
recompressed copy) sits in the training fold makes the validation score too good. This module
finds such pairs so that 01_eda can show them and 02_split can count those that cross a fold's
train / val boundary (and refuse the split above a limit: `split.check_fold_files`).

* Hashes: two 64-bit perceptual hashes of every image from the `imagehash` library, pHash (the
  low frequencies of the DCT: robust to rescaling, recompression, small shifts and colour
  changes) and dHash (the signs of horizontal gradients: a different failure mode). JPEGs are
  decoded at a reduced scale (PIL's `draft`, at least 64x64 px), which is several times faster
  and changes the hashes less than recompression does.
* Cache: one JSON file per data folder under `outputs/cache/near_duplicates/`, one entry per
  image file keyed by its path, size and mtime, so a second call hashes nothing.
* Pairs: an image pair is a near-duplicate when BOTH hashes differ in at most `threshold`
  bits (default 10 of 64; unrelated pictures differ in about 32). Distances are computed with
  numpy on the packed 64-bit hashes (XOR + popcount), a block of rows against all at a time.
* Clusters: the connected components of the pair graph (scipy), largest first.

Same images, same pairs, same bytes. At most `processes` (default 2) worker processes.

Example:
    coco = load_coco("data/train_all.json")
    hashes = hash_images(coco, "data")
    pairs = find_pairs(hashes, threshold=10)
    clusters(pairs).head()
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.coco.files import Coco, image_path
from segkit.core.errors import CocoError, ParameterError
from segkit.core.paths import outputs_dir, write_text_atomic

DEFAULT_THRESHOLD = 10
HASH_BITS = 64
CACHE_VERSION = "phash8-dhash8-draft64-v1"  # change when the hashing changes
DRAFT_SIZE = 64
PAIR_COLUMNS = ["image_a", "image_b", "file_a", "file_b", "phash_distance", "dhash_distance"]


def _pack(bits: np.ndarray) -> int:
    """An 8x8 boolean hash as one unsigned 64-bit integer (row-major, first bit highest)."""
    return int.from_bytes(np.packbits(np.asarray(bits, bool).ravel()).tobytes(), "big")


def hash_file(path: str | os.PathLike) -> tuple[int, int]:
    """(phash, dhash) of one image file as 64-bit integers; an unreadable file raises OSError."""
    import imagehash
    from PIL import Image

    with Image.open(path) as image:
        image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))  # JPEG: decode at 1/2..1/8 scale
        gray = image.convert("L")
    return _pack(imagehash.phash(gray).hash), _pack(imagehash.dhash(gray).hash)


def _hash_many(paths: list[str]) -> list:
    """Worker: the hashes of many files; a failing file gives its error text instead."""
    results = []
    for path in paths:
        try:
            results.append(hash_file(path))
        except Exception as exc:  # noqa: BLE001 - reported with the file's name by the caller
            results.append(f"{type(exc).__name__}: {exc}")
    return results


def _cache_file(data_root: Path) -> Path:
    key = hashlib.sha1(str(data_root.resolve()).encode()).hexdigest()[:16]
    return outputs_dir() / "cache" / "near_duplicates" / f"{data_root.resolve().name}_{key}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def hash_images(coco: Coco, data_root: str | os.PathLike, image_ids=None, cache: bool = True,
                processes: int = 2) -> pd.DataFrame:
    """Perceptual hashes of the images of `coco` (or of `image_ids` among them), read under
    `data_root`: index image_id (file order), columns file_name, phash, dhash (uint64).

    A missing or unreadable file raises a CocoError naming the file and the image id.
    `cache` reuses (and updates) the hashes of files whose path, size and mtime are unchanged.

    Example:
        hash_images(coco, "data").head()
    """
    if not isinstance(processes, (int, np.integer)) or isinstance(processes, bool) or processes < 1:
        raise ParameterError(f"processes must be a positive integer, got {processes!r}")
    root = Path(data_root)
    wanted = None if image_ids is None else set(image_ids)
    images = [img for img in coco.images if wanted is None or img["id"] in wanted]
    if wanted is not None and len(images) != len(wanted):
        unknown = sorted(wanted - {img["id"] for img in images})[:5]
        raise ParameterError(f"{coco.path}: no image ids {unknown}")
    keys, todo = [], []
    cache_path = _cache_file(root)
    entries = _read_cache(cache_path) if cache else {}
    for img in images:
        path = image_path(root, img)
        try:
            stat = path.stat()
        except OSError:
            raise CocoError(f"{path}: image file missing (image id {img['id']}, "
                            f"{coco.path})") from None
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        keys.append(key)
        if key not in entries:
            todo.append((key, str(path), img))
    if todo:
        paths = [p for _, p, _ in todo]
        if processes > 1 and len(paths) >= 64:
            from concurrent.futures import ProcessPoolExecutor

            chunks = [paths[i:i + 64] for i in range(0, len(paths), 64)]
            with ProcessPoolExecutor(max_workers=min(processes, len(chunks))) as pool:
                results = [r for chunk in pool.map(_hash_many, chunks) for r in chunk]
        else:
            results = _hash_many(paths)
        for (key, path, img), result in zip(todo, results):
            if isinstance(result, str):
                raise CocoError(f"{path}: image file unreadable (image id {img['id']}, "
                                f"{coco.path}): {result}")
            entries[key] = [f"{result[0]:016x}", f"{result[1]:016x}"]
        if cache:
            try:
                write_text_atomic(cache_path, json.dumps(
                    {"version": CACHE_VERSION, "entries": dict(sorted(entries.items()))},
                    separators=(",", ":")))
            except OSError:
                pass  # a cache that cannot be written only costs time next call
    phash = np.array([int(entries[k][0], 16) for k in keys], np.uint64)
    dhash = np.array([int(entries[k][1], 16) for k in keys], np.uint64)
    return pd.DataFrame({"file_name": [img["file_name"] for img in images],
                         "phash": phash, "dhash": dhash},
                        index=pd.Index([img["id"] for img in images], name="image_id"))


def _check_threshold(threshold) -> int:
    if (not isinstance(threshold, (int, np.integer)) or isinstance(threshold, bool)
            or not 0 <= threshold < HASH_BITS):
        raise ParameterError(f"threshold must be an integer number of differing bits, "
                             f"0..{HASH_BITS - 1}, got {threshold!r}")
    return int(threshold)


def find_pairs(hashes: pd.DataFrame, threshold: int = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Near-duplicate pairs: both the pHash and the dHash distance at most `threshold` bits.

    Columns image_a, image_b (a before b in file order), file_a, file_b, phash_distance,
    dhash_distance; sorted by (image_a's position, image_b's position). Vectorised: a block of
    rows XOR all later rows, popcount, in numpy.

    Example:
        find_pairs(hash_images(coco, "data"), threshold=8)
    """
    threshold = _check_threshold(threshold)
    p = hashes["phash"].to_numpy(np.uint64)
    d = hashes["dhash"].to_numpy(np.uint64)
    n = len(p)
    block = max(1, min(1024, 4_000_000 // max(n, 1)))  # about 32 MB of distances at a time
    rows, cols = [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        # only j > i: the block against itself and everything after it
        pd_ = np.bitwise_count(p[start:stop, None] ^ p[None, start:])
        dd_ = np.bitwise_count(d[start:stop, None] ^ d[None, start:])
        close = (pd_ <= threshold) & (dd_ <= threshold)
        i, j = np.nonzero(close)
        keep = j > i  # j is relative to `start`, i to `start` too
        rows.append(i[keep] + start)
        cols.append(j[keep] + start)
    i = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    j = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    ids = hashes.index.to_numpy()
    names = hashes["file_name"].to_numpy(object)
    return pd.DataFrame({
        "image_a": ids[i].astype(np.int64), "image_b": ids[j].astype(np.int64),
        "file_a": names[i], "file_b": names[j],
        "phash_distance": np.bitwise_count(p[i] ^ p[j]).astype(np.int64),
        "dhash_distance": np.bitwise_count(d[i] ^ d[j]).astype(np.int64)},
        columns=PAIR_COLUMNS)


def clusters(pairs: pd.DataFrame) -> pd.DataFrame:
    """Clusters of near-duplicates (connected components of the pairs): one row per image in a
    pair, columns cluster (0 = the largest; ties: the earliest member first), image_id,
    file_name, size (images in the cluster).

    Example:
        clusters(find_pairs(hashes)).groupby("cluster").size()
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    columns = ["cluster", "image_id", "file_name", "size"]
    if pairs.empty:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c != "file_name" else object)
                             for c in columns})
    # members in order of first appearance in the pairs (file order of image_a, then image_b)
    order: dict[int, int] = {}
    names: dict[int, str] = {}
    for a, b, fa, fb in pairs[["image_a", "image_b", "file_a", "file_b"]].itertuples(
            index=False):
        for image_id, name in ((a, fa), (b, fb)):
            if image_id not in order:
                order[image_id] = len(order)
                names[image_id] = name
    a = pairs["image_a"].map(order).to_numpy()
    b = pairs["image_b"].map(order).to_numpy()
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(order), len(order)))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for image_id, position in order.items():
        members.setdefault(int(labels[position]), []).append(image_id)
    groups = sorted(members.values(), key=lambda m: (-len(m), min(order[i] for i in m)))
    rows = []
    for k, group in enumerate(groups):
        for image_id in sorted(group, key=order.get):
            rows.append((k, int(image_id), names[image_id], len(group)))
    return pd.DataFrame(rows, columns=columns)


def near_duplicates(coco: Coco, data_root: str | os.PathLike,
                    threshold: int = DEFAULT_THRESHOLD, cache: bool = True,
                    processes: int = 2) -> pd.DataFrame:
    """`find_pairs(hash_images(...))` in one call: the near-duplicate pairs of a COCO file."""
    _check_threshold(threshold)
    return find_pairs(hash_images(coco, data_root, cache=cache, processes=processes), threshold)


def plot_clusters(data_root: str | os.PathLike, coco: Coco, cluster_table: pd.DataFrame,
                  max_clusters: int = 8, max_per_cluster: int = 6, thumb: float = 1.8):
    """Thumbnails of near-duplicate clusters: one row per cluster (the largest first), up to
    `max_per_cluster` images each, titled with the file names. Returns the figure."""
    import matplotlib.pyplot as plt

    from segkit.coco.files import read_image

    shown = [c for c in sorted(cluster_table["cluster"].unique())][:max_clusters]
    if not shown:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no near-duplicates", ha="center", va="center")
        return fig
    width = min(max_per_cluster, int(cluster_table["size"].max()))
    fig, axes = plt.subplots(len(shown), width, figsize=(thumb * width, thumb * len(shown)),
                             squeeze=False)
    for row, cluster in zip(axes, shown):
        members = cluster_table[cluster_table["cluster"] == cluster]
        for ax in row:
            ax.axis("off")
        for ax, (_, member) in zip(row, members.head(width).iterrows()):
            image = read_image(data_root, coco.image_by_id[int(member["image_id"])])
            ax.imshow(image)
            ax.set_title(Path(member["file_name"]).name, fontsize=7)
        row[0].text(-0.05, 0.5, f"cluster {cluster}\n{int(members['size'].iloc[0])} images",
                    transform=row[0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig
