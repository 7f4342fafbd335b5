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
    >>> names, values = read_submission(path, size=(2, 3))
    >>> names, values.shape
    (['a.jpg', 'b.jpg'], (2, 6))
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from segkit.errors import ParameterError, SubmissionError
from segkit.paths import atomic_path

HEADER = "image_id,PredictionString"
SUBMISSION_SIZE = (256, 256)
NUM_CLASSES = 11

_SPACE = ord(" ")
_ZERO = ord("0")
_READ_BUFFER = 1 << 20  # rows are ~128 KB: read in large chunks, not 8 KB ones
_MAX_VALUE_DIGITS = 3   # a uint8 class index has at most three digits
MAX_PROBLEMS = 1000     # validate_submission stops listing there (a binary file has no end)

# Each value 0..255 as the little-endian uint32 word of its digits and a trailing space,
# zero-padded: "7 " -> b"7 \0\0". Gathering words and dropping the zero bytes yields a row.
_TOKEN_WORDS = np.array(
    [int.from_bytes(f"{v} ".encode().ljust(4, b"\0"), "little") for v in range(256)],
    dtype="<u4",
)


# ---------------------------------------------------------------------------------------------
# Encoding and decoding one PredictionString
# ---------------------------------------------------------------------------------------------

class _Scratch:
    """Work arrays reused from row to row: a fresh 100+ KB array per step and row costs page
    faults that can outweigh the arithmetic."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, length: int, dtype) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None or array.size < length:
            array = self._arrays[name] = np.empty(max(length, 1), dtype)
        return array[:length]


class _RowEncoder:
    """Label values -> the bytes of one CSV row (prefix, values, newline)."""

    def __init__(self):
        self._scratch = _Scratch()

    def encode(self, values: np.ndarray, prefix: bytes) -> np.ndarray:
        """The row as a uint8 array, valid until the next call (write it at once).

        Rows whose values are all single digits (the common case) are two bytes per value,
        laid out by two strided assignments; other rows gather each value's digit word and
        drop the zero padding.
        """
        values = values.ravel()
        n, start = values.size, len(prefix)
        if int(values.max()) < 10:
            out = self._scratch.get("out", start + 2 * n, np.uint8)
            body = out[start:]
            np.add(values, _ZERO, out=body[0::2], casting="unsafe")
            body[1::2] = _SPACE
        else:
            words = self._scratch.get("words", n, "<u4")
            np.take(_TOKEN_WORDS, values, out=words)
            word_bytes = words.view(np.uint8)
            keep = self._scratch.get("keep", word_bytes.size, bool)
            np.not_equal(word_bytes, 0, out=keep)
            length = int(np.count_nonzero(keep))
            out = self._scratch.get("out", start + length, np.uint8)
            np.compress(keep, word_bytes, out=out[start:])
        out[:start] = np.frombuffer(prefix, np.uint8)
        out[-1] = ord("\n")  # replaces the last value's trailing space
        return out


def _pixel(index: int, size: tuple[int, int]) -> str:
    return f"pixel {index} (y={index // size[1]}, x={index % size[1]})"


class _RowDecoder:
    """A PredictionString's bytes -> uint8 values, strictly: only digits and single spaces,
    exactly H*W values, each below `num_classes`."""

    def __init__(self, num_classes: int, size: tuple[int, int]):
        self.num_classes = num_classes
        self.size = size
        self.expected = size[0] * size[1]
        self._scratch = _Scratch()
        self._even = np.arange(0, 2 * self.expected, 2, dtype=np.intp)  # 0, 2, 4, ...

    def decode(self, text: bytes | memoryview) -> tuple[np.ndarray | None, list[str]]:
        """(values, []) or (None, problems)."""
        raw = np.frombuffer(text, np.uint8)
        if raw.size == 0:
            return None, ["PredictionString is empty"]
        # Fast path: all values one digit, so the text is "d d ... d": spaces at odd bytes.
        if raw.size == 2 * self.expected - 1:
            digits = raw[0::2] - np.uint8(_ZERO)  # bytes below '0' wrap around to >= 208
            if (raw[1::2] == _SPACE).all() and int(digits.max()) < 10:
                return self._check_range(digits)
        return self._decode_general(text, raw)

    def _decode_general(self, text: bytes | memoryview, raw: np.ndarray):
        get, n = self._scratch.get, raw.size
        # Three padding bytes after the text that are never digits, for looking ahead.
        digit = get("digit", n + 3, np.uint8)
        np.subtract(raw, np.uint8(_ZERO), out=digit[:n])
        digit[n:] = 255
        is_digit = get("is_digit", n + 3, bool)
        np.less(digit, 10, out=is_digit)
        is_space = get("is_space", n, bool)
        np.equal(raw, _SPACE, out=is_space)
        spaces = int(np.count_nonzero(is_space))
        if spaces + int(np.count_nonzero(is_digit[:n])) != n:  # something else in the text
            either = get("either", n, bool)
            np.logical_or(is_digit[:n], is_space, out=either)
            first = int(np.argmin(either))
            position = int(np.count_nonzero(is_space[:first]))
            text = bytes(text)
            start = text.rfind(b" ", 0, first) + 1
            end = text.find(b" ", first)
            token = text[start: end if end >= 0 else n][:20].decode("utf-8", "replace")
            if token[:1] == "-" and token[1:].isdigit() and token[1:].isascii():
                return None, [f"value {token} at {_pixel(position, self.size)} is negative: "
                              f"outside 0..{self.num_classes - 1}"]
            return None, [f"non-integer text {token!r} at {_pixel(position, self.size)}"]
        if is_space[0] or is_space[-1]:
            return None, ["values must be separated by single spaces: the PredictionString "
                          f"{'starts' if is_space[0] else 'ends'} with a space"]
        pair = get("pair", n, bool)
        np.logical_and(is_space[1:], is_space[:-1], out=pair[: n - 1])
        if pair[: n - 1].any():
            position = int(np.count_nonzero(is_space[: int(np.argmax(pair[: n - 1])) + 1]))
            return None, ["values must be separated by single spaces: two spaces before "
                          f"{_pixel(position, self.size)}"]
        count = spaces + 1
        if count != self.expected:
            return None, [f"has {count} values, expected {self.expected} "
                          f"({self.size[0]}x{self.size[1]})"]

        # Now the text is values of 1+ digits joined by single spaces. Single-digit values
        # would put value j's digit at byte 2j; each longer value shifts the ones after it.
        # Longer values are the minority, so find them (a digit after a space or at the
        # start, followed by a digit), read them on their own, and read every other value
        # as the one digit at 2j plus the shift accumulated before it.
        np.logical_and(is_digit[:n], is_digit[1: n + 1], out=pair)
        np.logical_and(pair[1:], is_space[:-1], out=pair[1:])
        if 4 * np.count_nonzero(pair) > count:
            return self._decode_by_ends(digit, is_digit, is_space)
        starts = np.flatnonzero(pair)
        third = is_digit[starts + 2]
        length = 2 + third
        too_long = np.flatnonzero(third & is_digit[starts + 3])
        extra = length - 1                                       # bytes beyond one digit
        before = np.cumsum(extra) - extra                        # extra bytes before each
        index = (starts - before) // 2                           # which value it is
        if too_long.size:
            k = int(index[too_long[0]])
            return None, [f"a value at {_pixel(k, self.size)} has more than "
                          f"{_MAX_VALUE_DIGITS} digits: outside 0..{self.num_classes - 1}"]
        long_values = digit[starts] * 10 + digit[starts + 1].astype(np.int64)
        three = length == 3
        long_values[three] = long_values[three] * 10 + digit[starts[three] + 2]

        shift = get("shift", count, np.intp)  # intp: np.take converts other index types
        shift.fill(0)
        shift[index] = extra
        np.cumsum(shift, out=shift)
        np.add(shift, self._even, out=shift)   # the byte of each value's last digit
        values = np.take(digit, shift)
        values[index] = np.minimum(long_values, 255)
        return self._check_range(values, index, long_values)

    def _decode_by_ends(self, digit: np.ndarray, is_digit: np.ndarray, is_space: np.ndarray):
        """Valid text with many multi-digit values: each value ends just before a space (or
        at the end); its number is the digit there, plus 10x the byte before and 100x the
        one before that when those are digits too."""
        get, n = self._scratch.get, is_space.size
        two = get("two", n, bool)
        np.logical_and(is_digit[:n], is_digit[1: n + 1], out=two)  # bytes i and i+1 digits
        if n > 2:
            four = get("four", n - 2, bool)
            np.logical_and(two[:-2], two[2:], out=four)
            if four.any():
                k = int(np.count_nonzero(is_space[: int(np.argmax(four))]))
                return None, [f"a value at {_pixel(k, self.size)} has more than "
                              f"{_MAX_VALUE_DIGITS} digits: outside 0..{self.num_classes - 1}"]
        ones = get("ones", n, np.uint8)
        np.multiply(digit[:n], is_digit[:n], out=ones)  # spaces count as 0
        number = get("number", n, np.int16)
        np.copyto(number, ones)
        place = get("place", n, np.int16)
        np.multiply(ones[:-1], 10, out=place[1:], casting="unsafe")
        np.add(number[1:], place[1:], out=number[1:])
        if n > 2:
            np.multiply(ones[:-2], is_digit[1: n - 1], out=place[2:], casting="unsafe")
            np.multiply(place[2:], 100, out=place[2:])
            np.add(number[2:], place[2:], out=number[2:])
        last = get("last", n, bool)
        last[:-1] = is_space[1:]
        last[-1] = True
        values = np.compress(last, number)
        values, problems = self._check_range(values)
        return (None, problems) if problems else (values.astype(np.uint8), [])

    def _check_range(self, values: np.ndarray, long_index: np.ndarray | None = None,
                     long_values: np.ndarray | None = None
                     ) -> tuple[np.ndarray | None, list[str]]:
        """`values` (uint8) unless some lie outside 0..C-1; values of more than two digits
        come separately (`long_index`, `long_values`) as they may not fit uint8."""
        if int(values.max()) < self.num_classes and (
                long_values is None or int(long_values.max(initial=0)) < self.num_classes):
            return values, []
        outside = np.flatnonzero(values >= self.num_classes)
        if long_index is not None and long_index.size:
            outside = np.union1d(outside, long_index[long_values >= self.num_classes])
        if outside.size:
            k = int(outside[0])
            value = int(values[k])
            if long_index is not None and k in long_index:
                value = int(long_values[np.flatnonzero(long_index == k)[0]])
            return None, [f"value {value} at {_pixel(k, self.size)} is outside "
                          f"0..{self.num_classes - 1} ({outside.size} values outside)"]
        return values, []


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _check_parameters(num_classes: int, size: Sequence[int]) -> tuple[int, int]:
    if not (isinstance(num_classes, (int, np.integer)) and 1 <= num_classes <= 255):
        raise ParameterError(f"num_classes must be an integer in 1..255, got {num_classes!r}")
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ParameterError(f"size must be (height, width) positive integers, got {size!r}")
    return int(size[0]), int(size[1])


class SubmissionWriter:
    """Writes rows one at a time, checking each; made by `submission_writer`."""

    def __init__(self, file, path: Path, num_classes: int, size: tuple[int, int]):
        self._file = file
        self._path = path
        self._num_classes = num_classes
        self._size = size
        self._seen: set[str] = set()
        self._encoder = _RowEncoder()
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
        >>> with submission_writer("sub.csv", size=(2, 2)) as writer:      # doctest: +SKIP
        ...     writer.write_row("a.jpg", np.zeros((2, 2), np.uint8))
    """
    size = _check_parameters(num_classes, size)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=_READ_BUFFER) as f:
        f.write(HEADER.encode() + b"\n")
        yield SubmissionWriter(f, path, int(num_classes), size)


def write_submission(path: str | os.PathLike, file_names: Sequence[str],
                     label_maps: Iterable[np.ndarray], num_classes: int = NUM_CLASSES,
                     size: tuple[int, int] = SUBMISSION_SIZE) -> Path:
    """Write a submission: row i is `file_names[i]` and the i-th label map (streamed).

    Label maps are (H, W) integer arrays with values 0..num_classes-1. A wrong shape or value,
    a bad or repeated name, or a count mismatch raises a SubmissionError and leaves no file.

    Example:
        >>> write_submission("sub.csv", names, (predict(img) for img in images))  # doctest: +SKIP
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
# Reading
# ---------------------------------------------------------------------------------------------

def _header_problem(line: bytes) -> str | None:
    """Why the first line is not the header (a UTF-8 byte-order mark is tolerated)."""
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    if line == HEADER.encode():
        return None
    shown = line[:60].decode("utf-8", "replace")
    return f"header must be {HEADER!r}, got {shown!r}"


# Compressed or binary files are refused by their first bytes, before any parsing.
_MAGIC = {b"\x1f\x8b": "gzip-compressed", b"PK\x03\x04": "a zip archive",
          b"BZh": "bzip2-compressed", b"\xfd7zXZ\x00": "xz-compressed",
          b"\x28\xb5\x2f\xfd": "zstd-compressed", b"7z\xbc\xaf\x27\x1c": "a 7z archive"}


def _binary_problem(start: bytes) -> str | None:
    """Why a file starting with these bytes is no submission CSV, or None."""
    for magic, what in _MAGIC.items():
        if start.startswith(magic):
            return f"{what}, not a CSV text file (decompress it first)"
    nul = start.find(b"\0")
    if nul >= 0:
        return (f"binary data (a NUL byte at offset {nul}), not a CSV text file (UTF-16 text "
                "also has them: save it as UTF-8)")
    return None


def _max_line(size: tuple[int, int]) -> int:
    """The longest a row can be: 3 digits and a space per value, plus an image_id."""
    return 4 * size[0] * size[1] + 65536


def _lines(path: Path, max_line: int | None = None
           ) -> Iterator[tuple[int, memoryview, bool]]:
    """(row number, line without its line ending, whether a line break ended it), header
    included as row 1. A compressed or binary file, or a line longer than `max_line`,
    raises a SubmissionError.

    Lines are views into one reused buffer, valid until the next line is taken: a fresh
    128 KB bytes object per row costs more in page faults than parsing it.
    """
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise SubmissionError(f"{path}: file not found") from None
    except OSError as exc:
        raise SubmissionError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with f:
        buffer = bytearray(_READ_BUFFER)
        start = end = 0   # the unread bytes are buffer[start:end]
        row = 0
        at_eof = False
        first_read = True
        while True:
            newline = buffer.find(b"\n", start, end)
            if newline < 0 and not at_eof:
                if max_line is not None and end - start > max_line:
                    raise SubmissionError(f"{path} row {row + 1}: more than {max_line} bytes "
                                          "without a line break: not a submission row")
                # Move the partial line to the front (a bigger buffer if it is full), refill.
                if end - start == len(buffer):
                    buffer = buffer + bytearray(len(buffer))  # a new object: views stay valid
                buffer[: end - start] = buffer[start:end]
                end, start = end - start, 0
                read = f.readinto(memoryview(buffer)[end:])
                at_eof = not read
                end += read or 0
                if first_read:
                    first_read = False
                    problem = _binary_problem(bytes(buffer[:end]))
                    if problem:
                        raise SubmissionError(f"{path}: {problem}")
                continue
            row += 1
            if newline < 0:  # the last line has no line break
                if start < end:
                    stop = end - 1 if buffer[end - 1] == 13 else end
                    yield row, memoryview(buffer)[start:stop], False
                return
            stop = newline - 1 if newline > start and buffer[newline - 1] == 13 else newline
            yield row, memoryview(buffer)[start:stop], True
            start = newline + 1


def _unterminated(terminated: bool) -> str:
    return "" if terminated else " (the file ends here without a line break: truncated?)"


def _split_row(line: bytes | memoryview) -> tuple[str, bytes | memoryview]:
    """A data row -> (image_id, PredictionString bytes); a ValueError says what is wrong."""
    if not line:
        raise ValueError("empty row")
    head = bytes(line[:1024])  # image_ids are short: look for the comma near the start
    comma = head.find(b",")
    if comma < 0 and len(line) > len(head):
        comma = bytes(line).find(b",")
    if head.startswith(b'"'):  # a CSV-quoted image_id ("" inside stands for one quote)
        close = re.match(rb'"((?:[^"]|"")*)"', head)
        if close is None or head[close.end(): close.end() + 1] != b",":
            raise ValueError("a quoted image_id must be closed by a quote and a comma")
        quoted, comma = close.group(1), close.end()
        try:
            name = quoted.replace(b'""', b'"').decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("image_id is not valid UTF-8") from None
        text = line[comma + 1:]
        if len(text) >= 2 and text[0] == 34 and text[-1] == 34:  # a quoted PredictionString
            text = text[1:-1]
    else:
        if comma < 0:
            raise ValueError("no comma between image_id and PredictionString")
        try:
            name = bytes(line[:comma]).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("image_id is not valid UTF-8") from None
        text = line[comma + 1:]
    if not name:
        raise ValueError("empty image_id")
    return name, text


def iter_submission(path: str | os.PathLike, num_classes: int = NUM_CLASSES,
                    size: tuple[int, int] = SUBMISSION_SIZE
                    ) -> Iterator[tuple[int, str, np.ndarray]]:
    """Stream (row number, image_id, uint8 values of length H*W) from a submission.

    The first problem raises a SubmissionError naming the file and the row; memory holds one
    row at a time. Run `validate_submission` to list every problem at once.

    Example:
        >>> for row, name, values in iter_submission("sub.csv"):          # doctest: +SKIP
        ...     label_map = values.reshape(256, 256)
    """
    size = _check_parameters(num_classes, size)
    path = Path(path)
    lines = _lines(path, _max_line(size))
    first = next(lines, None)
    if first is None:
        raise SubmissionError(f"{path}: empty file (no header)")
    problem = _header_problem(bytes(first[1]))
    if problem:
        raise SubmissionError(f"{path} row 1: {problem}")
    decoder = _RowDecoder(num_classes, size)
    for row, line, terminated in lines:
        try:
            name, text = _split_row(line)
        except ValueError as exc:
            raise SubmissionError(f"{path} row {row}: {exc}{_unterminated(terminated)}") from None
        values, problems = decoder.decode(text)
        if problems:
            raise SubmissionError(f"{path} row {row} (image {name!r}): {problems[0]}"
                                  f"{_unterminated(terminated)}")
        yield row, name, values


def read_submission(path: str | os.PathLike, num_classes: int = NUM_CLASSES,
                    size: tuple[int, int] = SUBMISSION_SIZE) -> tuple[list[str], np.ndarray]:
    """The whole submission: (image_ids in row order, uint8 array (N, H*W)).

    Example:
        >>> names, values = read_submission("sub.csv")                    # doctest: +SKIP
        >>> values[0].reshape(256, 256)                                   # doctest: +SKIP
    """
    names, rows = [], []
    for _, name, values in iter_submission(path, num_classes, size):
        names.append(name)
        rows.append(values)
    height, width = _check_parameters(num_classes, size)
    array = np.stack(rows) if rows else np.zeros((0, height * width), np.uint8)
    return names, array


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
        >>> for problem in validate_submission("sub.csv", "data/test.json"):  # doctest: +SKIP
        ...     print(problem)
    """
    from segkit.classes import ClassTable
    from segkit.coco import load_coco

    test = load_coco(test_json)
    if num_classes is None:
        num_classes = ClassTable.for_coco(test.categories).num_classes
    size = _check_parameters(num_classes, size)
    path = Path(path)
    test_names = [img["file_name"] for img in test.images]
    test_position = {name: i for i, name in enumerate(test_names)}

    problems: list[str] = []
    first_row: dict[str, int] = {}      # image_id -> the row it first appears on
    in_test_order: list[tuple[int, str]] = []  # (row, image_id) of known ids, first occurrences
    lines = _lines(path, _max_line(size))
    first = next(lines, None)  # a missing, compressed or binary file raises a SubmissionError
    if first is None:
        return [f"{path}: empty file (no header)"]
    pending = []
    header = bytes(first[1])  # a copy: the line's buffer is reused
    problem = _header_problem(header)
    if problem:
        problems.append(f"{path} row 1: {problem}")
        # A data row where the header should be: check it as a row too.
        if header.partition(b",")[0].decode("utf-8", "replace") in test_position:
            pending.append((1, header, first[2]))

    decoder = _RowDecoder(num_classes, size)
    rows = itertools.chain(pending, lines)
    while len(problems) < MAX_PROBLEMS:
        try:
            row, line, terminated = next(rows)
        except StopIteration:
            break
        except SubmissionError as exc:  # a line far too long: the rest is not rows either
            problems.append(str(exc))
            break
        try:
            name, text = _split_row(line)
        except ValueError as exc:
            problems.append(f"{path} row {row}: {exc}{_unterminated(terminated)}")
            continue
        where = f"{path} row {row} (image {name!r})"
        _, row_problems = decoder.decode(text)
        problems.extend(f"{where}: {p}{_unterminated(terminated)}" for p in row_problems)
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
        return problems

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
