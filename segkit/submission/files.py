"""The submission CSV: write it fast, read it fast, and list everything wrong with one.

Format (see the competition's sample submission): a header `image_id,PredictionString`, then
one row per test image in test.json order. `image_id` is the image's `file_name`;
`PredictionString` is the label map (256x256 by default) flattened row-major as integers
0..C-1 separated by single spaces. No quoting is needed and none is written.

Rows are numbered as a spreadsheet shows them: the header is row 1, the first image row 2.
Every error names the file and the row.

Speed: the values are small integers, so a row's text is built in numpy from a table of the
digit bytes of each value and written with one `f.write`; reading turns the row's bytes into
integers the same way, never through `str.split` and `int`.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "sub.csv")
    >>> labels = [np.zeros((2, 3), np.uint8), np.full((2, 3), 10, np.uint8)]
    >>> _ = write_submission(path, ["a.jpg", "b.jpg"], labels, size=(2, 3))
    >>> open(path).read().splitlines()[1:]
    ['a.jpg,0 0 0 0 0 0', 'b.jpg,10 10 10 10 10 10']
    >>> from segkit.submission.reader import read_submission
    >>> names, values = read_submission(path, size=(2, 3))
    >>> names, values.shape
    (['a.jpg', 'b.jpg'], (2, 6))
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from segkit.core.errors import SubmissionError
from segkit.core.paths import atomic_path
from segkit.submission.codec import (
    HEADER,
    NUM_CLASSES,
    READ_BUFFER,
    SUBMISSION_SIZE,
    RowDecoder,
    RowEncoder,
    check_parameters,
)
from segkit.submission.reader import (
    header_problem,
    max_line_length,
    read_lines,
    split_row,
    unterminated,
)

MAX_PROBLEMS = 1000     # validate_submission stops listing there (a binary file has no end)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

class SubmissionWriter:
    """Writes rows one at a time, checking each; made by `submission_writer`."""

    def __init__(self, file, path: Path, num_classes: int, size: tuple[int, int]):
        self._file = file
        self._path = path
        self._num_classes = num_classes
        self._size = size
        self._seen: set[str] = set()
        self._encoder = RowEncoder()
        self.rows_written = 0

    def write_row(self, file_name: str, label_map: np.ndarray) -> None:
        """Append one image's row; a bad name or label map raises a SubmissionError."""
        where = f"{self._path} row {self.rows_written + 2} (image {file_name!r})"
        if not isinstance(file_name, str) or not file_name:
            raise SubmissionError(f"{where}: image_id must be a non-empty string")
        if any(ch in file_name for ch in ',"\r\n'):
            raise SubmissionError(f"{where}: image_id must not contain commas, quotes or "
                                  "line breaks (the format has no quoting)")
        if file_name in self._seen:
            raise SubmissionError(f"{where}: image_id appears twice")
        label_map = np.asarray(label_map)
        if label_map.dtype == bool or not np.issubdtype(label_map.dtype, np.integer):
            raise SubmissionError(f"{where}: label map must hold integers, got {label_map.dtype}")
        if label_map.shape != self._size:
            raise SubmissionError(f"{where}: label map has shape {label_map.shape}, "
                                  f"expected {self._size}")
        low, high = int(label_map.min()), int(label_map.max())
        if low < 0 or high >= self._num_classes:
            bad = low if low < 0 else high
            raise SubmissionError(f"{where}: label map holds {bad}, outside "
                                  f"0..{self._num_classes - 1}")
        self._file.write(self._encoder.encode(label_map.astype(np.uint8, copy=False),
                                              file_name.encode("utf-8") + b","))
        self._seen.add(file_name)
        self.rows_written += 1


@contextmanager
def submission_writer(path: str | os.PathLike, num_classes: int = NUM_CLASSES,
                      size: tuple[int, int] = SUBMISSION_SIZE) -> Iterator[SubmissionWriter]:
    """Stream rows into a submission; the file appears only if the block ends without error.

    Example:
        with submission_writer("sub.csv", size=(2, 2)) as writer:
            writer.write_row("a.jpg", np.zeros((2, 2), np.uint8))
    """
    size = check_parameters(num_classes, size)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=READ_BUFFER) as f:
        f.write(HEADER.encode() + b"\n")
        yield SubmissionWriter(f, path, int(num_classes), size)


def write_submission(path: str | os.PathLike, file_names: Sequence[str],
                     label_maps: Iterable[np.ndarray], num_classes: int = NUM_CLASSES,
                     size: tuple[int, int] = SUBMISSION_SIZE) -> Path:
    """Write a submission: row i is `file_names[i]` and the i-th label map (streamed).

    Label maps are (H, W) integer arrays with values 0..num_classes-1. A wrong shape or value,
    a bad or repeated name, or a count mismatch raises a SubmissionError and leaves no file.

    Example:
        write_submission("sub.csv", names, (predict(img) for img in images))
    """
    names = list(file_names)
    path = Path(path)
    with submission_writer(path, num_classes, size) as writer:
        for i, label_map in enumerate(label_maps):
            if i >= len(names):
                raise SubmissionError(f"{path}: more label maps than the {len(names)} file names")
            writer.write_row(names[i], label_map)
        if writer.rows_written != len(names):
            raise SubmissionError(f"{path}: {len(names)} file names but only "
                                  f"{writer.rows_written} label maps")
    return path


# ---------------------------------------------------------------------------------------------
# Validation against test.json
# ---------------------------------------------------------------------------------------------

def _longest_increasing(sequence: list[int]) -> set[int]:
    """Indices of one longest strictly increasing subsequence (patience sorting): the rows that
    are in order; the others are the fewest rows to call out of order."""
    tails: list[int] = []        # smallest tail value of an increasing run of each length
    tail_index: list[int] = []   # where that tail sits in `sequence`
    previous = [-1] * len(sequence)
    for i, value in enumerate(sequence):
        k = bisect.bisect_left(tails, value)
        if k == len(tails):
            tails.append(value)
            tail_index.append(i)
        else:
            tails[k] = value
            tail_index[k] = i
        previous[i] = tail_index[k - 1] if k else -1
    keep = set()
    i = tail_index[-1] if tail_index else -1
    while i >= 0:
        keep.add(i)
        i = previous[i]
    return keep


def validate_submission(path: str | os.PathLike, test_json: str | os.PathLike,
                        num_classes: int | None = None,
                        size: tuple[int, int] = SUBMISSION_SIZE) -> list[str]:
    """Every problem of a submission against test.json, each naming the file and the row.

    Checks the header; each row's image_id (unknown to test.json, repeated, out of order) and
    PredictionString (non-integer text, spacing, number of values, values outside
    0..num_classes-1; by default the test.json's categories plus background); and the images
    of test.json without a row. An empty list means valid.
    Out-of-order rows are the fewest that break test.json's order (one moved row is reported
    once, not every row after it).

    Example:
        for problem in validate_submission("sub.csv", "data/test.json"):
            print(problem)
    """
    from segkit.coco.files import load_coco
    from segkit.core.classes import ClassTable

    test = load_coco(test_json)
    if num_classes is None:
        num_classes = ClassTable.for_coco(test.categories).num_classes
    size = check_parameters(num_classes, size)
    path = Path(path)
    test_names = [img["file_name"] for img in test.images]
    test_position = {name: i for i, name in enumerate(test_names)}

    lines = read_lines(path, max_line_length(size))
    first = next(lines, None)  # a missing, compressed or binary file raises a SubmissionError
    if first is None:
        return [f"{path}: empty file (no header)"]
    problems: list[str] = []
    pending = []
    header = bytes(first[1])  # a copy: the line's buffer is reused
    problem = header_problem(header)
    if problem:
        problems.append(f"{path} row 1: {problem}")
        # A data row where the header should be: check it as a row too.
        if header.partition(b",")[0].decode("utf-8", "replace") in test_position:
            pending.append((1, header, first[2]))

    decoder = RowDecoder(num_classes, size)
    found = _row_problems(path, test_json, itertools.chain(pending, lines), decoder,
                          test_position, problems)
    if found is None:
        return problems
    first_row, in_test_order = found
    problems.extend(_order_problems(path, test_json, test_names, test_position, first_row,
                                    in_test_order))
    return problems


def _row_problems(path: Path, test_json, rows: Iterator, decoder: RowDecoder,
                  test_position: dict[str, int], problems: list[str]
                  ) -> tuple[dict[str, int], list[tuple[int, str]]] | None:
    """Append each row's problems to `problems`; return (image_id -> the row it first appears
    on, (row, image_id) of the ids test.json knows, first occurrences), or None once
    MAX_PROBLEMS are listed (the last one says so)."""
    first_row: dict[str, int] = {}
    in_test_order: list[tuple[int, str]] = []
    while len(problems) < MAX_PROBLEMS:
        try:
            row, line, terminated = next(rows)
        except StopIteration:
            break
        except SubmissionError as exc:  # a line far too long: the rest is not rows either
            problems.append(str(exc))
            break
        try:
            name, text = split_row(line)
        except ValueError as exc:
            problems.append(f"{path} row {row}: {exc}{unterminated(terminated)}")
            continue
        where = f"{path} row {row} (image {name!r})"
        _, row_problems = decoder.decode(text)
        problems.extend(f"{where}: {p}{unterminated(terminated)}" for p in row_problems)
        if name in first_row:
            problems.append(f"{where}: duplicate image_id (first on row {first_row[name]})")
        elif name not in test_position:
            problems.append(f"{where}: extra image, not in {test_json}")
            first_row[name] = row
        else:
            first_row[name] = row
            in_test_order.append((row, name))
    else:
        problems.append(f"{path}: stopped after {MAX_PROBLEMS} problems")
        return None
    return first_row, in_test_order


def _order_problems(path: Path, test_json, test_names: list[str],
                    test_position: dict[str, int], first_row: dict[str, int],
                    in_test_order: list[tuple[int, str]]) -> list[str]:
    """Rows out of test.json's order (the fewest that break it), then test.json's images
    without a row."""
    problems = []
    in_order = _longest_increasing([test_position[name] for _, name in in_test_order])
    for k, (row, name) in enumerate(in_test_order):
        if k not in in_order:
            problems.append(f"{path} row {row} (image {name!r}): wrong order: it is image "
                            f"{test_position[name] + 1} of {test_json}, so row "
                            f"{test_position[name] + 2}")
    for i, name in enumerate(test_names):
        if name not in first_row:
            problems.append(f"{path}: missing image {name!r} (image {i + 1} of {test_json}, "
                            f"expected on row {i + 2})")
    return problems
