"""The numbers inside COCO annotations, checked in bulk: polygons, RLE, bbox, area, iscrowd.

`segkit.coco.checks.validate` walks the annotations once and hands each one's segmentation and
extra fields to the batches here (`PolygonChecks`, `RleChecks`, `ExtraChecks`); each batch
then checks everything it collected in one numpy pass (one over all polygon coordinates, one
over all RLE strings, one over all boxes and areas), so a 3,300-image file validates in a
fraction of a second. Problems and warnings name the file and the annotation:

- polygons: flat lists of >= 6 finite numbers within the image (2 px of overshoot warns);
- RLE: `size` equal to the image's, counts decoded and checked: only pycocotools' characters,
  not truncated, no negative run, runs adding up to height x width;
- `bbox` (4 finite numbers, no negative size), `area` (finite, >= 0; beyond the image only
  warns), `iscrowd` (0 or 1);
- degenerate polygons: an annotation whose polygons enclose no area warns (it paints next to
  nothing, whatever its `area` says).
"""

from __future__ import annotations

import numpy as np

from segkit.coco.rle import rle_string_problems

# A polygon point farther outside the image than this (pixels) is an error; nearer is clipped
# by the rasteriser and counted as a warning (annotation tools often overshoot by a pixel).
OFF_IMAGE_TOLERANCE = 2.0
_NUMBER_TYPES = {int, float}


def show_value(v, limit: int = 40) -> str:
    """`repr(v)` for a message, cut to `limit` characters."""
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _floats(values: list) -> np.ndarray | None:
    """`values` as float64, or None when one is not an int or float (booleans are not numbers)
    or is an integer too large for a float."""
    if not set(map(type, values)) <= _NUMBER_TYPES:
        return None
    try:
        return np.array(values, np.float64)
    except OverflowError:
        return None


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 1e6 else f"{x:.3g}"


def annotation_where(source: str, ref: tuple[int, int]) -> str:
    """How a problem names an annotation (`ref`: annotation id, image id)."""
    return f"{source}: annotation {ref[0]} (image {ref[1]})"


class _Batch:
    """Entries collected from every annotation and checked in one numpy pass; problems name
    the annotation (`ref`: annotation id, image id)."""

    def __init__(self, source: str):
        self.source = source

    def where(self, ref: tuple[int, int]) -> str:
        return annotation_where(self.source, ref)


class PolygonChecks(_Batch):
    def __init__(self, source: str):
        super().__init__(source)
        self.values: list = []
        self.lengths: list[int] = []
        self.info: list[tuple[tuple, int, int, int]] = []  # ref, polygon index, h, w
        self.claimed: dict = {}  # ref -> the annotation's `area` field

    def add(self, seg: list, size: tuple[int, int], ref: tuple, problems: list,
            area=None) -> None:
        self.claimed[ref] = area
        for k, poly in enumerate(seg):
            n = len(poly) if type(poly) is list else -1
            if n >= 6 and not n % 2:
                self.values.extend(poly)
                self.lengths.append(n)
                self.info.append((ref, k, *size))
            elif n < 0:
                problems.append(f"{self.where(ref)}: polygon {k} is not a flat list of numbers")
            elif n % 2:
                problems.append(f"{self.where(ref)}: polygon {k} has an odd number of "
                                f"coordinates ({n})")
            else:
                problems.append(f"{self.where(ref)}: polygon {k} has {n // 2} points; 3 are "
                                "needed")

    def _numbers(self, problems: list) -> np.ndarray:
        """All coordinates as float64; polygons holding something else are reported and
        dropped (the slow path, only for a file with such a polygon)."""
        array = _floats(self.values)
        if array is not None:
            return array
        keep, values, start = [], [], 0
        for n, info in zip(self.lengths, self.info, strict=True):
            poly = self.values[start: start + n]
            start += n
            if _floats(poly) is None:
                bad = next((v for v in poly if type(v) not in _NUMBER_TYPES), None)
                what = f" ({show_value(bad)})" if bad is not None else " (an integer too large)"
                problems.append(f"{self.where(info[0])}: polygon {info[1]} is not a flat list "
                                f"of numbers{what}")
            else:
                keep.append((n, info))
                values.extend(poly)
        self.lengths = [n for n, _ in keep]
        self.info = [i for _, i in keep]
        return np.array(values, np.float64)

    def check(self, problems: list, warnings: list) -> None:
        if not self.lengths:
            return
        coords = self._numbers(problems)
        if not self.lengths:
            return
        lengths = np.asarray(self.lengths)
        starts = np.cumsum(lengths) - lengths
        bad = np.logical_or.reduceat(~np.isfinite(coords), starts)
        half_starts = starts // 2
        xs, ys = coords[0::2], coords[1::2]
        size = np.array([(h, w) for _, _, h, w in self.info], np.float64)
        with np.errstate(invalid="ignore"):
            over = np.maximum.reduce([-np.minimum.reduceat(xs, half_starts),
                                      np.maximum.reduceat(xs, half_starts) - size[:, 1],
                                      -np.minimum.reduceat(ys, half_starts),
                                      np.maximum.reduceat(ys, half_starts) - size[:, 0]])
        for j in np.flatnonzero(bad | (over > 0)):
            ref, k, h, w = self.info[j]
            if bad[j]:
                poly = coords[starts[j]: starts[j] + lengths[j]]
                value = poly[~np.isfinite(poly)][0]
                problems.append(f"{self.where(ref)}: polygon {k} holds a non-finite "
                                f"coordinate ({value})")
            elif over[j] > OFF_IMAGE_TOLERANCE:
                problems.append(f"{self.where(ref)}: polygon {k} reaches {_fmt(over[j])}px "
                                f"outside the {w}x{h} image")
            else:
                warnings.append(f"{self.where(ref)}: polygon {k} is {over[j]:.1f}px off the "
                                "image (clipped)")
        self._check_degenerate(xs, ys, half_starts, lengths // 2, bad, warnings)

    def _check_degenerate(self, xs, ys, starts, points, bad, warnings: list) -> None:
        """A warning naming each annotation whose polygons enclose no area (all points on one
        line, or repeated): it paints (almost) nothing, whatever its `area` field claims."""
        following = np.arange(1, len(xs) + 1)
        following[starts + points - 1] = starts  # each polygon's last point closes onto its first
        with np.errstate(invalid="ignore", over="ignore"):
            cross = xs * ys[following] - xs[following] * ys
            areas = np.abs(np.add.reduceat(cross, starts)) / 2
        totals: dict = {}
        for j, (ref, _, _, _) in enumerate(self.info):
            if not bad[j]:
                totals[ref] = totals.get(ref, 0.0) + float(areas[j])
        for ref, total in totals.items():
            if total < 1e-6:
                claim = self.claimed.get(ref)
                said = f", though its area field says {_fmt(float(claim))}" if \
                    type(claim) in _NUMBER_TYPES and np.isfinite(claim) and claim > 0 else ""
                warnings.append(f"{self.where(ref)}: its polygons enclose no area (degenerate: "
                                f"the points lie on one line), so it paints next to "
                                f"nothing{said}")


class RleChecks(_Batch):
    """Sizes and uncompressed counts are checked as they come, compressed strings decoded
    together in `check`."""

    def __init__(self, source: str):
        super().__init__(source)
        self.strings: list[bytes] = []
        self.info: list[tuple[tuple, int]] = []  # ref, h * w

    def add(self, seg: dict, size: tuple[int, int], ref: tuple, problems: list) -> None:
        h, w = size
        rle_size, counts = seg.get("size"), seg.get("counts")
        if not (type(rle_size) is list and len(rle_size) == 2
                and type(rle_size[0]) is int and type(rle_size[1]) is int):
            problems.append(f"{self.where(ref)}: RLE without a [height, width] 'size'")
        elif rle_size[0] != h or rle_size[1] != w:
            problems.append(f"{self.where(ref)}: RLE size {rle_size} disagrees with the "
                            f"image's [{h}, {w}]")
        elif type(counts) is str:
            if not counts.isascii():
                problems.append(f"{self.where(ref)}: compressed RLE counts hold a non-ASCII "
                                "character (corrupted)")
            else:
                self.strings.append(counts.encode())
                self.info.append((ref, h * w))
        elif type(counts) is list:
            problem = _uncompressed_problem(counts, h, w)
            if problem:
                problems.append(f"{self.where(ref)}: {problem}")
        else:
            problems.append(f"{self.where(ref)}: RLE 'counts' must be a string or a list of "
                            f"integers, got {type(counts).__name__}")

    def check(self, problems: list) -> None:
        found = rle_string_problems(self.strings, [n for _, n in self.info])
        for j, problem in sorted(found.items()):
            problems.append(f"{self.where(self.info[j][0])}: {problem}")


def _uncompressed_problem(counts: list, h: int, w: int) -> str | None:
    if not counts:
        return "uncompressed RLE counts are empty"
    if not set(map(type, counts)) <= {int}:
        bad = next(v for v in counts if type(v) is not int)
        return f"uncompressed RLE counts must be integers, got {show_value(bad)}"
    try:
        array = np.array(counts, np.int64)
    except OverflowError:
        return "uncompressed RLE counts hold an integer too large"
    if (array < 0).any():
        return f"uncompressed RLE counts hold a negative run ({int(array.min())})"
    total = int(array.sum())
    if total != h * w:
        return f"uncompressed RLE counts do not add up to {h}x{w} = {h * w} (they sum to {total})"
    return None


class ExtraChecks(_Batch):
    """`area`, `bbox` and `iscrowd`: not used for the masks, but non-finite or negative values
    mean a broken export (errors). An `area` beyond the image only warns, however large: segkit
    takes masks from the segmentation and never reads it. A bbox far outside the image (more
    than the image's side) is an error, a little outside a warning."""

    def __init__(self, source: str):
        super().__init__(source)
        self.areas: list = []
        self.boxes: list = []
        self.area_info: list[tuple[tuple, int, int]] = []
        self.box_info: list[tuple[tuple, int, int]] = []

    def add(self, ann: dict, size: tuple[int, int], ref: tuple, problems: list) -> None:
        crowd = ann.get("iscrowd", 0)
        if crowd != 0 and not (crowd == 1 and type(crowd) is int):
            problems.append(f"{self.where(ref)}: iscrowd must be 0 or 1, got {show_value(crowd)}")
        if "area" in ann:
            self.areas.append(ann["area"])
            self.area_info.append((ref, *size))
        if "bbox" in ann:
            box = ann["bbox"]
            if type(box) is list and len(box) == 4:
                self.boxes.extend(box)
                self.box_info.append((ref, *size))
            else:
                problems.append(f"{self.where(ref)}: bbox must be [x, y, width, height], got "
                                f"{show_value(box)}")

    def check(self, problems: list, warnings: list) -> None:
        areas = _floats(self.areas)
        if areas is None:  # slow path: find the entries that are not numbers
            areas = np.array([a if _floats([a]) is not None else np.nan for a in self.areas],
                             np.float64)
        pixels = np.array([h * w for _, h, w in self.area_info], np.float64)
        with np.errstate(invalid="ignore"):
            odd = ~(np.isfinite(areas) & (areas >= 0) & (areas <= pixels * 1.1))
        for j in np.flatnonzero(odd):
            where, a = self.where(self.area_info[j][0]), self.areas[j]
            if not np.isfinite(areas[j]) or areas[j] < 0:
                problems.append(f"{where}: area must be a finite number from 0 to about the "
                                f"image's {int(pixels[j])} pixels, got {show_value(a)}")
            else:  # unused (masks come from the segmentation): a warning, however large
                warnings.append(f"{where}: area {_fmt(areas[j])} exceeds the image's "
                                f"{int(pixels[j])} pixels (not used: segkit takes the mask "
                                "from the segmentation)")
        self._check_boxes(problems, warnings)

    def _check_boxes(self, problems: list, warnings: list) -> None:
        boxes = _floats(self.boxes)
        if boxes is None:
            boxes = np.array([b if _floats([b]) is not None else np.nan for b in self.boxes],
                             np.float64)
        boxes = boxes.reshape(-1, 4)
        size = np.array([(h, w) for _, h, w in self.box_info], np.float64).reshape(-1, 2)
        x0, y0, bw, bh = boxes.T
        with np.errstate(invalid="ignore", over="ignore"):
            over = np.maximum.reduce([-x0, -y0, x0 + bw - size[:, 1], y0 + bh - size[:, 0]])
            fine = np.isfinite(boxes).all(axis=1) & (bw >= 0) & (bh >= 0)
            flagged = np.flatnonzero(~fine | (over > OFF_IMAGE_TOLERANCE))
        for j in flagged:
            ref, h, w = self.box_info[j]
            where, shown = self.where(ref), show_value(self.boxes[4 * j: 4 * j + 4])
            if not np.isfinite(boxes[j]).all():
                problems.append(f"{where}: bbox must be 4 finite numbers, got {shown}")
            elif bw[j] < 0 or bh[j] < 0:
                problems.append(f"{where}: bbox {shown} has a negative width or height")
            elif over[j] > max(h, w):
                problems.append(f"{where}: bbox {shown} lies far outside the {w}x{h} image")
            else:
                warnings.append(f"{where}: bbox {shown} reaches {_fmt(over[j])}px outside the "
                                f"{w}x{h} image")
