r"""A dataset's fingerprint: what a starting recipe depends on (segkit.search.plan).

* image sizes (the most common width x height, the range);
* classes: pixel share, presence (share of images with the class), annotations, object sizes
  (COCO buckets) from 01_eda's statistics (segkit.data.eda);
* near-duplicate clusters (segkit.data.near_duplicates), when the image files are there;
* the file names' structure, as candidate `group_by` values (segkit.folds.groups): a prefix
  before a frame number (`0016E5_08100.png` -> `regex:^(.+)_[A-Za-z]*\d+\.\w+$`), a top
  folder, runs of frame numbers (`frames:GAP`); each scored by the near-duplicate pairs it
  leaves across groups (pairs across groups can land across train and val) and, when there is
  a test.json, by the share of test images whose group training does not have (a test of new
  sequences). The suggestion: a candidate that leaves no pair across and whose groups are
  mostly new in the test (folds then hold out whole groups, as the test does); else the finest
  candidate that leaves no pair across with at least 3 groups; without pairs, none (image-level
  folds leak nothing), or the prefix of video-like names when no image is there to hash.

Example:
    fp = fingerprint("/data/camvid")
    print(fp.report()); fp.groups.group_by
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.core.classes import BACKGROUND, ClassTable
from segkit.core.errors import ParameterError

MIN_GROUPS = 3


@dataclass
class GroupSuggestion:
    """The suggested `group_by` (None: each image its own group), its group count, why, and
    every candidate that was scored (columns group_by, groups, largest_share, pairs_across,
    test_unseen: the share of test images in groups training does not have)."""

    group_by: str | None
    n_groups: int
    why: str
    candidates: pd.DataFrame


@dataclass
class Fingerprint:
    data_root: Path
    annotation_file: Path
    coco: object
    classes: ClassTable
    n_test: int
    image_sizes: pd.DataFrame  # width, height, images (most common first)
    class_table: pd.DataFrame  # 01_eda's class summary + presence
    sizes: pd.DataFrame  # one row per annotation (segkit.data.eda.object_sizes)
    pairs: pd.DataFrame | None  # near-duplicate pairs (None: no image files)
    clusters: pd.DataFrame | None
    groups: GroupSuggestion

    @property
    def n_images(self) -> int:
        return len(self.coco.images)

    @property
    def typical_size(self) -> tuple[int, int]:
        """(width, height) of the most common image size."""
        row = self.image_sizes.iloc[0]
        return int(row["width"]), int(row["height"])

    def pixel_share_ratio(self) -> float:
        """The largest class's pixel share over the smallest present class's (Background
        left out): how imbalanced the pixels are."""
        shares = self.class_table.drop(index=BACKGROUND, errors="ignore")["pixel_share"]
        shares = shares[shares > 0]
        return float(shares.max() / shares.min()) if len(shares) else 1.0

    def scene_parsing(self) -> bool:
        """Most images show most classes (street scenes) rather than a few objects each
        (photographed trash): then folds are stratified by pixel area, not object counts."""
        presence = self.class_table.drop(index=BACKGROUND, errors="ignore")["presence"]
        return bool(len(presence) and (presence >= 0.5).mean() >= 0.5)

    def report(self) -> str:
        w, h = self.typical_size
        table = self.class_table
        lines = [f"data: {self.annotation_file} ({self.n_images} images, {len(self.coco.annotations)}"
                 f" annotations, {len(self.classes) - 1} classes; {self.n_test} test images)",
                 f"image sizes: {len(self.image_sizes)} distinct; most common {w}x{h} "
                 f"({int(self.image_sizes.iloc[0]['images'])} images); widths "
                 f"{int(self.image_sizes['width'].min())}-{int(self.image_sizes['width'].max())}, "
                 f"heights {int(self.image_sizes['height'].min())}-"
                 f"{int(self.image_sizes['height'].max())}"]
        buckets = self.sizes["size"].value_counts(normalize=True)
        lines.append("objects: " + ", ".join(f"{b} {buckets.get(b, 0):.0%}"
                                             for b in ("small", "medium", "large"))
                     + f" (COCO buckets, {len(self.sizes)} annotations)")
        lines.append("classes (pixel share, images with the class):")
        for name, row in table.iterrows():
            lines.append(f"  {name:<18} {row['pixel_share']:>7.2%} {row['presence']:>6.0%}")
        if self.pairs is None:
            lines.append("near-duplicates: no image files, not hashed")
        else:
            n_clusters = self.clusters["cluster"].nunique() if len(self.clusters) else 0
            lines.append(f"near-duplicates: {len(self.pairs)} pairs in {n_clusters} clusters "
                         f"({len(self.clusters)} images)")
        if len(self.groups.candidates):
            lines.append("file-name groupings:")
            for row in self.groups.candidates.itertuples(index=False):
                across = "" if pd.isna(row.pairs_across) else \
                    f", {int(row.pairs_across)} pairs across groups"
                unseen = "" if pd.isna(row.test_unseen) else \
                    f", {row.test_unseen:.0%} of the test images in new groups"
                lines.append(f"  {row.group_by}: {row.groups} groups (largest "
                             f"{row.largest_share:.0%}){across}{unseen}")
        return "\n".join(lines)


def _frame_gap(coco) -> int | None:
    """The usual step between consecutive frame numbers of a sequence (names equal but for
    their last number), or None when names carry no such numbers."""
    last = re.compile(r"(\d+)(?!.*\d)")
    runs: dict = {}
    for img in coco.images:
        name = img["file_name"]
        match = last.search(name)
        if match is None:
            return None
        runs.setdefault((name[:match.start()], name[match.end():]), []).append(
            int(match.group(1)))
    steps = [d for numbers in runs.values() if len(numbers) > 1
             for d in np.diff(sorted(numbers)) if d > 0]
    return int(np.median(steps)) if steps else None


def group_candidates(coco) -> list[str]:
    """`group_by` values the file names suggest (see the module docstring)."""
    names = [img["file_name"] for img in coco.images]
    found = []
    for sep in ("_", "-"):
        pattern = rf"^(.+){re.escape(sep)}[A-Za-z]*\d+\.\w+$"
        if all(re.match(pattern, Path(n).name) for n in names):
            found.append(f"regex:{pattern}")
    if all("/" in n for n in names):
        found.append("regex:^([^/]+)/")
    gap = _frame_gap(coco)
    if gap:
        found.append(f"frames:{gap}")
    return found


def _test_unseen(candidate: str, groups: pd.Series, test_names: list[str]) -> float:
    """The share of test images whose regex group training does not have (NaN: not a regex
    candidate, or no test image it names)."""
    if not test_names or not candidate.startswith("regex:"):
        return np.nan
    pattern = re.compile(candidate[len("regex:"):])
    found = [pattern.search(n if "/" in pattern.pattern else Path(n).name) for n in test_names]
    named = [m.group(1) if m.re.groups else m.group(0) for m in found if m]
    if not named:
        return np.nan
    seen = set(groups)
    return float(np.mean([g not in seen for g in named]))


def suggest_group_by(coco, pairs: pd.DataFrame | None,
                     test_names: list[str] | None = None) -> GroupSuggestion:
    """The grouping of the images that keeps near-duplicates inside one fold and mirrors the
    test (module docstring); `pairs` None: no images were hashed; `test_names`: the test
    images' file names."""
    from segkit.folds.groups import image_groups

    n = len(coco.images)
    rows = []
    for candidate in group_candidates(coco):
        try:
            groups = image_groups(coco, candidate)
        except ParameterError:
            continue
        n_groups = groups.nunique()
        if n_groups < 2 or n_groups > n / 2:
            continue
        across = np.nan
        if pairs is not None:
            a = groups.reindex(pairs["image_a"]).to_numpy()
            b = groups.reindex(pairs["image_b"]).to_numpy()
            across = int((a != b).sum())
        rows.append({"group_by": candidate, "groups": int(n_groups),
                     "largest_share": float(groups.value_counts().iloc[0] / n),
                     "pairs_across": across,
                     "test_unseen": _test_unseen(candidate, groups, test_names or [])})
    table = pd.DataFrame(rows, columns=["group_by", "groups", "largest_share", "pairs_across",
                                        "test_unseen"])
    like_test = table[(table["test_unseen"] >= 0.5) & (table["pairs_across"].fillna(0) == 0)]
    if len(like_test):
        best = like_test.sort_values("groups", ascending=False).iloc[0]
        leak = "" if pairs is None else (f"; it keeps all {len(pairs)} near-duplicate pairs "
                                         "inside groups")
        return GroupSuggestion(best["group_by"], int(best["groups"]),
                               f"{best['test_unseen']:.0%} of the test images are in groups "
                               f"training does not have: folds hold out whole groups of "
                               f"{best['group_by']}, as the test does{leak}", table)
    if pairs is None:
        video = table[table["group_by"].str.startswith("regex:^(.+)")]
        if len(video) and any(c.startswith("frames:") for c in table["group_by"]):
            best = video.iloc[0]
            return GroupSuggestion(best["group_by"], int(best["groups"]),
                                   "no image files to hash, but the names are numbered frames of "
                                   f"{best['groups']} sequences: one sequence per group", table)
        return GroupSuggestion(None, n, "no image files to hash and no sequence-like names: "
                                        "each image its own group", table)
    if not len(pairs):
        return GroupSuggestion(None, n, "no near-duplicate pairs: image-level folds leak "
                                        "nothing", table)
    clean = table[(table["pairs_across"] == 0) & (table["groups"] >= MIN_GROUPS)]
    if len(clean):
        best = clean.sort_values(["groups", "largest_share"], ascending=[False, True]).iloc[0]
        return GroupSuggestion(best["group_by"], int(best["groups"]),
                               f"{len(pairs)} near-duplicate pairs would cross image-level "
                               f"folds; {best['group_by']} keeps every pair inside one of "
                               f"{best['groups']} groups", table)
    if len(table):
        best = table.sort_values(["pairs_across", "groups"], ascending=[True, False]).iloc[0]
        if best["groups"] >= 2 and best["pairs_across"] < len(pairs):
            return GroupSuggestion(best["group_by"], int(best["groups"]),
                                   f"{len(pairs)} near-duplicate pairs; {best['group_by']} "
                                   f"leaves the fewest across groups "
                                   f"({int(best['pairs_across'])})", table)
    return GroupSuggestion(None, n, f"{len(pairs)} near-duplicate pairs, but no file-name "
                                    "structure explains them: image-level folds (02_split "
                                    "counts the pairs across each fold)", table)


def fingerprint(data_root: str | os.PathLike, annotation_file: str = "train_all.json",
                duplicate_threshold: int = 10, log=None) -> Fingerprint:
    """The fingerprint of a COCO file under `data_root` (module docstring). Label maps are
    rasterised once into the cache (training reads them); images are hashed when present."""
    from segkit.coco.files import load_coco
    from segkit.coco.pixels import pixel_counts
    from segkit.data import eda, near_duplicates

    root = Path(data_root)
    path = Path(annotation_file) if Path(annotation_file).is_absolute() else root / annotation_file
    coco = eda.load_for_statistics(path)
    classes = ClassTable.for_coco(coco.categories)
    say = log or (lambda _: None)
    say(f"fingerprint: statistics of {path}")
    sizes = eda.object_sizes(coco, classes)
    with_images = eda.available_images(coco, root)
    pixels = pixel_counts(coco, classes, cache=bool(with_images))
    table = eda.class_summary(sizes, pixels, classes)
    table["presence"] = table["images"] / max(len(coco.images), 1)
    dims = pd.DataFrame([(img["width"], img["height"]) for img in coco.images],
                        columns=["width", "height"])
    image_sizes = dims.value_counts().rename("images").reset_index()
    pairs = clusters = None
    if len(with_images) == len(coco.images):
        say(f"fingerprint: perceptual hashes of {len(with_images)} images")
        hashes = near_duplicates.hash_images(coco, root)
        pairs = near_duplicates.find_pairs(hashes, duplicate_threshold)
        clusters = near_duplicates.clusters(pairs)
    test = root / "test.json"
    test_names = [img["file_name"] for img in load_coco(test).images] if test.is_file() else []
    return Fingerprint(root, path, coco, classes, len(test_names), image_sizes, table, sizes,
                       pairs, clusters, suggest_group_by(coco, pairs, test_names))
