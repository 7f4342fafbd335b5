"""Fuzzing the two files users hand to segkit: a COCO annotation file and a submission CSV.

A valid file of each kind is made here and mutated in many seeded ways: deleted keys, wrong
types, NaN and infinities, absurd numbers, corrupted RLE, paths out of the data root,
truncation at random offsets, random byte flips, compression, duplicated and swapped rows...
Each mutated file must be accepted (then usable, with identical results where the mutation
changes no meaning) or refused with problems naming the file: never an exception, a hang or
runaway memory. Most mutations run in-process through the functions the CLI calls
(`check_coco`, `validate_submission`, under a time limit); a handful go through the real CLI
in a subprocess with a timeout and a 4 GB address-space limit.

Submissions have an independent oracle: a plain, strict Python reader of the format. A mutated
CSV must be accepted exactly when the plain reader accepts it, with the same values.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segkit.coco.files import check_coco, label_map, load_coco
from segkit.core.classes import TRASH, ClassTable
from segkit.core.errors import CocoError, SubmissionError
from segkit.submission.codec import HEADER
from segkit.submission.files import validate_submission, write_submission
from segkit.submission.reader import read_submission

SEED = 15
SIZE = (8, 8)
NAMES = ["batch_01_vt/0001.jpg", "batch_02_vt/0002.jpg", "batch_03/0003.jpg"]
MEMORY_LIMIT = 4 << 30


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail (rather than hang the suite) when the block runs longer than `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, "-m", "segkit", *args], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit_memory,
                          cwd=Path(__file__).resolve().parents[1])


def byte_mutations(raw: bytes, rng: np.random.Generator, count: int) -> list[tuple[str, bytes]]:
    """Truncations at random offsets and random byte flips (1-3 bytes each)."""
    out = []
    for k in range(count):
        cut = int(rng.integers(1, len(raw)))
        out.append((f"truncated at {cut}", raw[:cut]))
        flipped = bytearray(raw)
        for at in rng.integers(0, len(raw), int(rng.integers(1, 4))):
            flipped[at] = int(rng.integers(0, 256))
        out.append((f"byte flip {k}", bytes(flipped)))
    return out


# ---------------------------------------------------------------------------------------------
# COCO annotation files
# ---------------------------------------------------------------------------------------------

def valid_coco() -> dict:
    """Three 16x12 images; polygons, a compressed and an uncompressed RLE, bbox, area, iscrowd,
    the ten trash categories."""
    block = np.zeros((12, 16), np.uint8, order="F")
    block[2:7, 3:9] = 1
    rle = mask_utils.encode(block)["counts"].decode()
    images = [{"id": i, "file_name": f"batch_01_vt/{i:04d}.jpg", "width": 16, "height": 12}
              for i in (1, 2, 3)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 16, 0, 16, 12, 0, 12]],
         "area": 192.0, "bbox": [0, 0, 16, 12], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 9, "segmentation": [[2, 2, 7.5, 2, 7.5, 8, 2, 8]],
         "area": 33.0, "bbox": [2, 2, 5.5, 6], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "segmentation": {"size": [12, 16],
                                                                     "counts": rle},
         "area": 30, "bbox": [3, 2, 6, 5], "iscrowd": 1},
        {"id": 4, "image_id": 3, "category_id": 10,
         "segmentation": {"size": [12, 16], "counts": [24, 12, 156]}, "area": 12,
         "bbox": [2, 0, 1, 12], "iscrowd": 1},
    ]
    cats = [{"id": k, "name": TRASH.names[k], "supercategory": TRASH.names[k]}
            for k in range(1, 11)]
    return {"info": {"year": 2021}, "images": images, "annotations": anns, "categories": cats}


def _set(path: str, value):
    """A mutation setting one entry, e.g. _set("images.0.width", True)."""
    def change(d):
        *parents, last = path.split(".")
        for key in parents:
            d = d[int(key)] if isinstance(d, list) else d[key]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return change


def _delete(path: str):
    def change(d):
        *parents, last = path.split(".")
        for key in parents:
            d = d[int(key)] if isinstance(d, list) else d[key]
        del d[int(last) if isinstance(d, list) else last]
    return change


NAN, INF = float("nan"), float("inf")
# (name, change of the dict) -> must be refused
COCO_REFUSED = [
    ("no images", _delete("images")), ("no categories", _delete("categories")),
    ("images an object", _set("images", {})), ("annotations a string", _set("annotations", "x")),
    ("image without id", _delete("images.0.id")), ("image id a list", _set("images.0.id", [1])),
    ("image id a string", _set("images.0.id", "1")), ("image id a float", _set("images.0.id", 1.5)),
    ("image id true", _set("images.0.id", True)), ("image id 2**70", _set("images.0.id", 2 ** 70)),
    ("duplicate image id", _set("images.1.id", 1)), ("width true", _set("images.0.width", True)),
    ("width 0", _set("images.0.width", 0)), ("width -5", _set("images.0.width", -5)),
    ("width 1e308", _set("images.0.width", 1e308)), ("width null", _set("images.0.width", None)),
    ("height a string", _set("images.0.height", "12")),
    ("height 10**9", _set("images.0.height", 10 ** 9)),
    ("file_name null", _set("images.0.file_name", None)),
    ("file_name a number", _set("images.0.file_name", 5)),
    ("file_name ../", _set("images.0.file_name", "../../etc/passwd")),
    ("file_name absolute", _set("images.0.file_name", "/etc/passwd")),
    ("file_name empty", _set("images.0.file_name", "")),
    ("file_name NUL", _set("images.0.file_name", "a\0b.jpg")),
    ("duplicate file_name", _set("images.1.file_name", "batch_01_vt/0001.jpg")),
    ("annotation without segmentation", _delete("annotations.0.segmentation")),
    ("duplicate annotation id", _set("annotations.1.id", 1)),
    ("unknown image_id", _set("annotations.0.image_id", 99)),
    ("image_id a list", _set("annotations.0.image_id", [1])),
    ("category_id null", _set("annotations.0.category_id", None)),
    ("polygon NaN", _set("annotations.1.segmentation.0.2", NAN)),
    ("polygon inf", _set("annotations.1.segmentation.0.3", INF)),
    ("polygon -inf", _set("annotations.1.segmentation.0.0", -INF)),
    ("polygon 1e308", _set("annotations.1.segmentation.0.4", 1e308)),
    ("polygon 10**400", _set("annotations.1.segmentation.0.4", 10 ** 400)),
    ("polygon bool", _set("annotations.1.segmentation.0.1", True)),
    ("polygon string", _set("annotations.1.segmentation.0.1", "2")),
    ("polygon nested", _set("annotations.1.segmentation.0", [[2, 2], [7, 2], [7, 8]])),
    ("polygon odd", _set("annotations.1.segmentation.0", [2, 2, 7, 2, 7])),
    ("polygon of 2 points", _set("annotations.1.segmentation.0", [2, 2, 7, 2])),
    ("segmentation empty", _set("annotations.1.segmentation", [])),
    ("segmentation a string", _set("annotations.1.segmentation", "x")),
    ("segmentation null", _set("annotations.1.segmentation", None)),
    ("RLE truncated", lambda d: d["annotations"][2]["segmentation"].update(
        counts=d["annotations"][2]["segmentation"]["counts"][:-2])),
    ("RLE bad character", lambda d: d["annotations"][2]["segmentation"].update(
        counts="!" + d["annotations"][2]["segmentation"]["counts"])),
    ("RLE non-ASCII", lambda d: d["annotations"][2]["segmentation"].update(
        counts=d["annotations"][2]["segmentation"]["counts"] + "\u00e9")),
    ("RLE counts a list of strings", _set("annotations.3.segmentation.counts", ["24", "12"])),
    ("RLE counts wrong sum", _set("annotations.3.segmentation.counts", [24, 12, 100])),
    ("RLE counts negative", _set("annotations.3.segmentation.counts", [36, -12, 168])),
    ("RLE counts huge", _set("annotations.3.segmentation.counts", [10 ** 30, 1])),
    ("RLE counts empty", _set("annotations.3.segmentation.counts", [])),
    ("RLE size wrong", _set("annotations.3.segmentation.size", [16, 12])),
    ("RLE size null", _set("annotations.3.segmentation.size", None)),
    ("RLE long run", _set("annotations.2.segmentation.counts", "oooooooooooooooo0")),
    ("bbox NaN", _set("annotations.0.bbox.2", NAN)),
    ("bbox negative", _set("annotations.0.bbox.3", -4)),
    ("bbox short", _set("annotations.0.bbox", [1, 2])),
    ("bbox 1e308", _set("annotations.0.bbox.0", 1e308)),
    ("area inf", _set("annotations.0.area", INF)), ("area NaN", _set("annotations.0.area", NAN)),
    ("area -1", _set("annotations.0.area", -1)), ("area a string", _set("annotations.0.area", "1")),
    ("iscrowd 2", _set("annotations.0.iscrowd", 2)),
    ("iscrowd a string", _set("annotations.0.iscrowd", "no")),
    ("category named paper", _set("categories.1.name", "paper")),
    ("category id null", _set("categories.0.id", None)),
    ("duplicate category id", _set("categories.1.id", 1)),
    ("a stray category", lambda d: d["categories"].append({"id": 11, "name": "Plastik"})),
    ("annotation a number", lambda d: d["annotations"].append(7)),
    ("image a string", lambda d: d["images"].append("c.jpg")),
    ("top level a list", lambda d: [d]),
]
# (name, change) -> must be accepted with identical label maps
COCO_SAME = [
    ("extra keys", lambda d: None if [x.update(extra={"a": [1, None]}) for x in d["images"]]
     else None),
    ("keys reversed", lambda d: {k: d[k] for k in reversed(list(d))}),
    ("no bbox, area, iscrowd", lambda d: None if [[a.pop(k) for k in ("bbox", "area",
                                                                        "iscrowd")]
                                                   for a in d["annotations"]] else None),
    ("no info", _delete("info")),
    ("explicit Background category", lambda d: d["categories"].append(
        {"id": 0, "name": "Background"})),
    ("polygon 1 px off the image", _set("annotations.0.segmentation.0.2", 17)),
]


def mutated(base: dict, change) -> object:
    """A changed copy: changes edit in place and return None, or return a new document."""
    data = copy.deepcopy(base)
    result = change(data)
    return data if result is None else result


def coco_outcome(path: Path):
    """None if refused (every problem naming the file), else the label maps of every image."""
    with time_limit(20):
        problems, _ = check_coco(path)
        if problems:
            assert all(p.startswith(str(path)) for p in problems), problems
            with pytest.raises(CocoError, match=re.escape(str(path))):
                load_coco(path)
            return None
        coco = load_coco(path)
        classes = ClassTable.for_coco(coco.categories)
        return {img["id"]: label_map(coco, img, classes) for img in coco.images}


def same_maps(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_fuzz_coco(tmp_path):
    base = valid_coco()
    path = tmp_path / "train.json"
    path.write_text(json.dumps(base))
    expected = coco_outcome(path)
    assert expected is not None

    for name, change in COCO_REFUSED:
        path.write_text(json.dumps(mutated(base, change)))
        assert coco_outcome(path) is None, f"{name}: accepted"
    for name, change in COCO_SAME:
        path.write_text(json.dumps(mutated(base, change), indent=1))
        got = coco_outcome(path)
        assert got is not None and same_maps(got, expected), name

    raw = json.dumps(base).encode()
    extra = [("gzip", gzip.compress(raw)), ("empty", b""), ("UTF-16", raw.decode().encode(
        "utf-16")), ("nested 100000 deep", b"[" * 100_000 + b"]" * 100_000),
        ("long integer", raw.replace(b'"year": 2021', b'"year": ' + b"9" * 5000)),
        ("NaN token", raw.replace(b"192.0", b"NaN")), ("Infinity token", raw.replace(
            b"33.0", b"-Infinity")), ("duplicated file", raw + raw)]
    rng = np.random.default_rng(SEED)
    outcomes = {"accepted": 0, "refused": 0}
    for name, content in extra + byte_mutations(raw, rng, 25):
        path.write_bytes(content)
        got = coco_outcome(path)
        outcomes["refused" if got is None else "accepted"] += 1
        assert got is None or all(m.max(initial=0) < 11 for m in got.values()), name
    assert len(COCO_REFUSED) + len(COCO_SAME) + len(extra) + 50 >= 100
    assert outcomes["refused"] > 20


# ---------------------------------------------------------------------------------------------
# Submission CSVs
# ---------------------------------------------------------------------------------------------

def plain_reader(raw: bytes, test_names: list[str], num_classes: int = 11):
    """The format read the plain, strict way: (names, values) if valid, else None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.removeprefix("\ufeff").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line break is optional
    lines = [line.removesuffix("\r") for line in lines]
    if not lines or lines[0] != HEADER:
        return None
    names, rows = [], []
    for line in lines[1:]:
        quoted = re.match(r'"((?:[^"]|"")*)",(.*)', line, re.S)
        if quoted:
            name, values = quoted.group(1).replace('""', '"'), quoted.group(2)
            if len(values) >= 2 and values[0] == values[-1] == '"':
                values = values[1:-1]
        else:
            name, comma, values = line.partition(",")
            if not comma:
                return None
        if not re.fullmatch(r"[0-9]{1,3}( [0-9]{1,3})*", values):
            return None
        row = [int(v) for v in values.split(" ")]
        if not name or len(row) != SIZE[0] * SIZE[1] or max(row) >= num_classes:
            return None
        names.append(name)
        rows.append(row)
    if names != test_names:
        return None
    return names, np.array(rows, np.uint8)


def submission_outcome(path: Path, test_json: Path):
    """None if refused (every problem naming the file), else (names, values)."""
    with time_limit(20):
        try:
            problems = validate_submission(path, test_json, size=SIZE)
        except SubmissionError as exc:  # not a CSV at all
            problems = [str(exc)]
        if problems:
            assert all(p.startswith(str(path)) for p in problems), problems
            return None
        return read_submission(path, size=SIZE)


def csv_mutations(raw: bytes, rows: list[bytes]) -> list[tuple[str, bytes]]:
    header, *body = raw.split(b"\n")[:-1]
    row = body[0]
    name, values = row.split(b",")
    tokens = values.split(b" ")

    def with_row(new_row: bytes, index: int = 0) -> bytes:
        lines = [header, *body]
        lines[1 + index] = new_row
        return b"\n".join(lines) + b"\n"

    def with_value(value: bytes, at: int = 5) -> bytes:
        t = list(tokens)
        t[at] = value
        return with_row(name + b"," + b" ".join(t))

    return [
        ("as written", raw), ("no final newline", raw[:-1]), ("CRLF", raw.replace(b"\n", b"\r\n")),
        ("CRLF, no final newline", raw.replace(b"\n", b"\r\n")[:-2]),
        ("BOM", b"\xef\xbb\xbf" + raw), ("quoted image_id", with_row(b'"' + name + b'",' + values)),
        ("quoted both", with_row(b'"' + name + b'","' + values + b'"')),
        ("unclosed quote", with_row(b'"' + name + b"," + values)),
        ("gzip", gzip.compress(raw)), ("gzip, renamed", gzip.compress(raw)[:40]),
        ("UTF-16", raw.decode().encode("utf-16")), ("empty", b""), ("header only", header),
        ("header and newline", header + b"\n"), ("no header", b"\n".join(body) + b"\n"),
        ("header typo", raw.replace(b"PredictionString", b"Prediction")),
        ("duplicated row", raw + body[-1] + b"\n"), ("dropped row", b"\n".join([header, *body[:2]])),
        ("swapped rows", b"\n".join([header, body[1], body[0], body[2]]) + b"\n"),
        ("blank line inside", raw.replace(b"\n", b"\n\n", 2)), ("blank line at end", raw + b"\n"),
        ("value -1", with_value(b"-1")), ("value 11", with_value(b"11")),
        ("value 256", with_value(b"256")), ("value 1000", with_value(b"1000")),
        ("value 007", with_value(b"007")), ("value 2.0", with_value(b"2.0")),
        ("value nan", with_value(b"nan")), ("value +1", with_value(b"+1")),
        ("value empty", with_value(b"")), ("tab separated", with_row(row.replace(b" ", b"\t"))),
        ("leading space", with_row(name + b", " + values)),
        ("trailing space", with_row(row + b" ")), ("extra field", with_row(row + b",x")),
        ("one value short", with_row(b" ".join(row.split(b" ")[:-1]))),
        ("one value extra", with_row(row + b" 1")),
        ("empty PredictionString", with_row(name + b",")), ("no comma", with_row(name)),
        ("empty image_id", with_row(b"," + values)), ("unknown image_id", with_row(b"x.jpg," + values)),
        ("NUL byte", raw[:50] + b"\0" + raw[51:]), ("latin-1 name", with_row(b"\xe9.jpg," + values)),
        ("CR inside a row", with_row(row.replace(b" ", b"\r", 1))),
        ("very long line", header + b"\n" + b"1 " * 300_000),
        ("random binary", np.random.default_rng(SEED).integers(0, 256, 50_000, np.uint8).tobytes()),
        ("doubled file", raw + raw),
    ]


def test_fuzz_submission(tmp_path):
    rng = np.random.default_rng(SEED)
    test_json = tmp_path / "test.json"
    images = [{"id": i + 1, "file_name": n, "width": 16, "height": 16}
              for i, n in enumerate(NAMES)]
    test_json.write_text(json.dumps({"images": images, "annotations": [],
                                     "categories": valid_coco()["categories"]}))
    maps = [rng.integers(0, 11, SIZE).astype(np.uint8) for _ in NAMES]
    path = write_submission(tmp_path / "sub.csv", NAMES, maps, size=SIZE)
    raw = path.read_bytes()
    mutations = csv_mutations(raw, raw.split(b"\n")) + byte_mutations(raw, rng, 30)
    assert len(mutations) >= 100
    accepted = 0
    for name, content in mutations:
        path.write_bytes(content)
        expected = plain_reader(content, NAMES)
        got = submission_outcome(path, test_json)
        assert (got is None) == (expected is None), f"{name}: segkit {'refused' if got is None else 'accepted'}"
        if got is not None:
            accepted += 1
            assert got[0] == expected[0] and np.array_equal(got[1], expected[1]), name
    assert accepted >= 8


# ---------------------------------------------------------------------------------------------
# The real command line: exit code 2 and one line naming the file, no traceback, no hang
# ---------------------------------------------------------------------------------------------

def test_fuzz_through_the_cli(tmp_path):
    coco = valid_coco()
    cases = []
    for name, change in [("nan polygon", _set("annotations.1.segmentation.0.2", NAN)),
                         ("truncated rle", dict(COCO_REFUSED)["RLE truncated"]),
                         ("huge polygon", _set("annotations.1.segmentation.0.4", 1e308))]:
        bad = tmp_path / f"{name.replace(' ', '_')}.json"
        bad.write_text(json.dumps(mutated(coco, change)))
        cases.append((["check-coco", str(bad)], 2, bad))
    gz = tmp_path / "gz.json"
    gz.write_bytes(gzip.compress(json.dumps(coco).encode()))
    cases.append((["check-coco", str(gz)], 2, gz))

    test_json = tmp_path / "test.json"
    test_json.write_text(json.dumps({"images": [{"id": i, "file_name": n, "width": 8,
                                                 "height": 8} for i, n in enumerate(NAMES)],
                                     "categories": coco["categories"]}))
    cases.append((["check-coco", str(test_json)], 0, test_json))  # a warning, not an error
    maps = [np.full(SIZE, k, np.uint8) for k in range(3)]
    raw = write_submission(tmp_path / "sub.csv", NAMES, maps, size=SIZE).read_bytes()
    for name, content, code in [("bare", raw[:-1], 0), ("truncated", raw[:150], 2),
                                ("gzip", gzip.compress(raw), 2),
                                ("negative", raw.replace(b" 1 ", b" -1 ", 1), 2)]:
        csv = tmp_path / f"{name}.csv"
        csv.write_bytes(content)
        cases.append((["check-submission", str(csv), "--test-json", str(test_json),
                       "--size", "8", "8"], code, csv))
    for args, code, named in cases:
        result = run_cli(*args)
        output = result.stdout + result.stderr
        assert result.returncode == code, (args, output)
        assert "Traceback" not in output, output
        assert str(named) in output, output
