"""Reading a submission CSV, fast and strictly: stream its rows, refuse what is no CSV.

Rows are numbered as a spreadsheet shows them: the header is row 1, the first image row 2.
Every error names the file and the row. Lines are read in large chunks into one reused
buffer and each row's PredictionString is decoded by `segkit.submission.codec.RowDecoder`;
memory holds one row at a time. `segkit.submission.files.validate_submission` uses the same line
reader to list every problem of a file at once.

Example:
    names, values = read_submission("sub.csv")
    values[0].reshape(256, 256)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from segkit.core.errors import SubmissionError
from segkit.submission.codec import (
    HEADER,
    NUM_CLASSES,
    READ_BUFFER,
    SUBMISSION_SIZE,
    RowDecoder,
    check_parameters,
)


def header_problem(line: bytes) -> str | None:
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


def max_line_length(size: tuple[int, int]) -> int:
    """The longest a row can be: 3 digits and a space per value, plus an image_id."""
    return 4 * size[0] * size[1] + 65536


def read_lines(path: Path, max_line: int | None = None
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
        buffer = bytearray(READ_BUFFER)
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


def unterminated(terminated: bool) -> str:
    return "" if terminated else " (the file ends here without a line break: truncated?)"


def split_row(line: bytes | memoryview) -> tuple[str, bytes | memoryview]:
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
        for row, name, values in iter_submission("sub.csv"):
            label_map = values.reshape(256, 256)
    """
    size = check_parameters(num_classes, size)
    path = Path(path)
    lines = read_lines(path, max_line_length(size))
    first = next(lines, None)
    if first is None:
        raise SubmissionError(f"{path}: empty file (no header)")
    problem = header_problem(bytes(first[1]))
    if problem:
        raise SubmissionError(f"{path} row 1: {problem}")
    decoder = RowDecoder(num_classes, size)
    for row, line, terminated in lines:
        try:
            name, text = split_row(line)
        except ValueError as exc:
            raise SubmissionError(f"{path} row {row}: {exc}{unterminated(terminated)}") from None
        values, problems = decoder.decode(text)
        if problems:
            raise SubmissionError(f"{path} row {row} (image {name!r}): {problems[0]}"
                                  f"{unterminated(terminated)}")
        yield row, name, values


def read_submission(path: str | os.PathLike, num_classes: int = NUM_CLASSES,
                    size: tuple[int, int] = SUBMISSION_SIZE) -> tuple[list[str], np.ndarray]:
    """The whole submission: (image_ids in row order, uint8 array (N, H*W)).

    Example:
        names, values = read_submission("sub.csv")
        values[0].reshape(256, 256)
    """
    names, rows = [], []
    for _, name, values in iter_submission(path, num_classes, size):
        names.append(name)
        rows.append(values)
    height, width = check_parameters(num_classes, size)
    array = np.stack(rows) if rows else np.zeros((0, height * width), np.uint8)
    return names, array
