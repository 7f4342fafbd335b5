"""The submission format and one PredictionString's bytes <-> label values, vectorised.

Format (see the competition's sample submission): a header `image_id,PredictionString`, then
one row per test image in test.json order. `image_id` is the image's `file_name`;
`PredictionString` is the label map (256x256 by default) flattened row-major as integers
0..C-1 separated by single spaces. No quoting is needed and none is written.

Speed: the values are small integers, so a row's text is built in numpy from a table of the
digit bytes of each value (`RowEncoder`); reading turns the row's bytes into integers the same
way (`RowDecoder`), never through `str.split` and `int`. `segkit.submission.files` writes and
validates files with these, `segkit.submission.reader` reads them.

Example:
    >>> import numpy as np
    >>> RowDecoder(11, (1, 3)).decode(b"0 10 2")[0].tolist()
    [0, 10, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segkit.core.errors import ParameterError

HEADER = "image_id,PredictionString"
SUBMISSION_SIZE = (256, 256)
NUM_CLASSES = 11

_SPACE = ord(" ")
_ZERO = ord("0")
READ_BUFFER = 1 << 20  # rows are ~128 KB: read in large chunks, not 8 KB ones
_MAX_VALUE_DIGITS = 3   # a uint8 class index has at most three digits

# Each value 0..255 as the little-endian uint32 word of its digits and a trailing space,
# zero-padded: "7 " -> b"7 \0\0". Gathering words and dropping the zero bytes yields a row.
_TOKEN_WORDS = np.array(
    [int.from_bytes(f"{v} ".encode().ljust(4, b"\0"), "little") for v in range(256)],
    dtype="<u4",
)


def check_parameters(num_classes: int, size: Sequence[int]) -> tuple[int, int]:
    """(height, width) as ints; a bad class count or size raises a ParameterError."""
    if not (isinstance(num_classes, (int, np.integer)) and 1 <= num_classes <= 255):
        raise ParameterError(f"num_classes must be an integer in 1..255, got {num_classes!r}")
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ParameterError(f"size must be (height, width) positive integers, got {size!r}")
    return int(size[0]), int(size[1])


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


class RowEncoder:
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


class RowDecoder:
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
