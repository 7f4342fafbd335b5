"""COCO's compressed RLE strings, decoded for many annotations at once, and checked first.

pycocotools packs each run length in 5-bit chunks, one character each (`chr(48 + chunk)`;
bit 0x20: more chunks follow; bit 0x10 of the last chunk: negative), and stores counts from
the fourth on as a delta to the count two before. Decoding all strings of an image (or a file)
in a few numpy passes is what makes rasterising and validation fast: pycocotools' own decode
writes a full HxW mask per annotation, and trusts the string (a corrupted one makes it write
outside its buffer), so `rle_string_problems` checks strings before anything decodes them.

Example:
    >>> from pycocotools import mask as mask_utils
    >>> import numpy as np
    >>> m = np.zeros((4, 3), np.uint8, order="F"); m[1:3, 1] = 1
    >>> rle = mask_utils.encode(m)["counts"]
    >>> counts, owner = decode_rle_counts([rle])
    >>> counts.tolist(), rle_string_problems([rle], [12])
    ([5, 2, 5], {})
"""

from __future__ import annotations

import numpy as np

MAX_RLE_CHUNKS = 7  # 7 x 5 bits: runs up to 2^34 pixels; longer means a corrupted string


def _numbers(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The signed numbers of joined valid strings (`chars`: bytes minus 48, uint8) and the
    index of each number's last character."""
    ends = np.flatnonzero((chars & 0x20) == 0)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    length = ends - starts + 1
    values = (chars[starts] & 0x1F).astype(np.int64)
    for c in range(1, int(length.max(initial=1))):
        more = np.flatnonzero(length > c)
        values[more] |= (chars[starts[more] + c] & 0x1F).astype(np.int64) << (5 * c)
    negative = np.flatnonzero(chars[ends] & 0x10)
    values[negative] -= np.left_shift(1, 5 * length[negative])
    return values, ends


def decode_rle_counts(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of many valid compressed RLE strings, and which string each belongs to.

    Runs alternate background / foreground, starting with background, over the pixels in
    column-major order.
    """
    lengths = np.fromiter(map(len, strings), np.int64, len(strings))
    chars = np.frombuffer(b"".join(strings), np.uint8) - np.uint8(48)
    values, ends = _numbers(chars)
    before = np.searchsorted(ends, np.cumsum(lengths))  # numbers ending before each string's end
    first = np.concatenate(([0], before[:-1]))
    owner = np.repeat(np.arange(len(strings)), before - first)
    j = np.arange(len(values)) - first[owner]
    counts = values.copy()
    for parity in (0, 1):  # delta chains: j = 2, 4, 6, ... and j = 1, 3, 5, ...
        chain = (j >= 1) & ((j & 1) == parity)
        running = np.cumsum(np.where(chain, values, 0))
        # running at a string's j = 0 (never in a chain) is the sum of the strings before it
        counts[chain] = running[chain] - running[first][owner[chain]]
    return counts, owner


def rle_string_problems(strings: list[bytes], pixels: list[int]) -> dict[int, str]:
    """Compressed RLE strings that do not decode to runs covering exactly `pixels[i]` pixels:
    index -> problem. Characters, truncation and run lengths are checked before decoding."""
    found: dict[int, str] = {}
    if not strings:
        return found
    lengths = np.fromiter(map(len, strings), np.int64, len(strings))
    chars = np.frombuffer(b"".join(strings), np.uint8) - np.uint8(48)
    for j in np.flatnonzero(lengths == 0):
        found[int(j)] = "compressed RLE counts are empty"
    outside = np.flatnonzero(chars > 63)  # below '0' wraps around to >= 208
    if outside.size:
        string_end = np.cumsum(lengths)
        for j in np.unique(np.searchsorted(string_end, outside, side="right")):
            text = strings[j]
            pos = next(p for p, c in enumerate(text) if not 48 <= c <= 111)
            found[int(j)] = (f"compressed RLE counts hold an unexpected character "
                             f"{chr(text[pos])!r} at position {pos} (corrupted)")
    last = np.cumsum(lengths)[lengths > 0] - 1
    for j in np.flatnonzero(lengths > 0)[(chars[last] & 0x20) != 0]:
        found.setdefault(int(j), "compressed RLE counts end in the middle of a number "
                                 "(truncated)")
    good = [j for j in range(len(strings)) if j not in found] if found else None
    if good is not None:
        if not good:
            return found
        strings = [strings[j] for j in good]
        pixels = [pixels[j] for j in good]
        chars = np.frombuffer(b"".join(strings), np.uint8) - np.uint8(48)
    index = good if good is not None else range(len(strings))

    ends = np.flatnonzero((chars & 0x20) == 0)
    chunks = np.diff(ends, prepend=-1)
    if (chunks > MAX_RLE_CHUNKS).any():
        owner = np.searchsorted(np.cumsum([len(s) for s in strings]), ends, side="right")
        long = set(np.unique(owner[chunks > MAX_RLE_CHUNKS]).tolist())
        for k in long:
            found[index[k]] = "compressed RLE counts hold an impossibly long run (corrupted)"
        keep = [k for k in range(len(strings)) if k not in long]
        if not keep:
            return found
        index = [index[k] for k in keep]
        strings = [strings[k] for k in keep]
        pixels = [pixels[k] for k in keep]

    counts, owner = decode_rle_counts(strings)
    starts = np.searchsorted(owner, np.arange(len(strings)))
    sums = np.add.reduceat(counts, starts)
    negative = np.minimum.reduceat(counts, starts) < 0
    expected = np.asarray(pixels, np.int64)
    for k in np.flatnonzero(negative | (sums != expected)):
        found[index[k]] = ("compressed RLE counts decode to a negative run (corrupted)"
                           if negative[k] else
                           f"compressed RLE counts decode to {int(sums[k])} pixels, not the "
                           f"image's {pixels[k]} (truncated or corrupted)")
    return found
