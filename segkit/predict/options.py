"""How to predict, as one object: checkpoint(s), test-time augmentation, sliding windows, output
size, label reduction, mixed precision. It is what 05 / 07, the CLI, out-of-fold scoring and
pseudo labels pass down to inference, and its `identity` is what a prediction folder records
in meta.json: a folder is reused only when the identity asked for matches it whole.

Example:
    >>> options = PredictOptions(flips=["h"], scales=[0.75, 1.0])
    >>> options.flips, options.scales, options.out_size
    (('h',), (0.75, 1.0), (256, 256))
    >>> PredictOptions(flips=["x"])
    Traceback (most recent call last):
    ...
    segkit.core.errors.ParameterError: flips has 'x'; allowed: h, v (each adds a flipped pass)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from segkit.core.checks import check_choice
from segkit.core.errors import ParameterError
from segkit.submission.codec import SUBMISSION_SIZE

FLIPS = ("h", "v")
REDUCTIONS = ("probs", "nearest", "max2x2")


def _positive_ints(name: str, value, count: int = 2) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != count \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ParameterError(f"{name}={value!r}; expected {count} positive integers")
    return tuple(int(v) for v in value)


def _checkpoint(value) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value in ("", None):
        raise ParameterError(f"checkpoint={value!r}; expected best, last, an iteration or a "
                             "checkpoint file")
    return value


@dataclass(frozen=True)
class PredictOptions:
    """Everything that changes a prediction's bytes (batch size and progress bars do not).

    checkpoint: "best", "last", an iteration or a file of the run; checkpoints: several of
    them soft-voted by 05 / 07 (empty: `checkpoint` alone); flips: any of "h", "v" (each adds
    a flipped pass); scales: input scale factors; slide: [crop, stride] sliding windows or
    None; out_size: (height, width) of the stored probabilities and the submission; reduction:
    how full-size labels shrink to out_size ("probs": resize probabilities, then argmax); amp:
    fp16 on GPU, bf16 on CPU.
    """

    checkpoint: str | int = "best"
    checkpoints: tuple = ()
    flips: tuple[str, ...] = ()
    scales: tuple[float, ...] = (1.0,)
    slide: tuple[int, int] | None = None
    out_size: tuple[int, int] = SUBMISSION_SIZE
    reduction: str = "probs"
    amp: bool = False

    def __post_init__(self):
        flips = tuple(self.flips or ())
        unknown = [f for f in flips if f not in FLIPS]
        if unknown:
            raise ParameterError(f"flips has {unknown[0]!r}; allowed: h, v (each adds a "
                                 "flipped pass)")
        if len(set(flips)) != len(flips):
            raise ParameterError(f"flips={list(flips)} names a flip twice")
        scales = tuple(self.scales or ())
        if not scales or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                 and math.isfinite(s) and s > 0 for s in scales):
            raise ParameterError(f"scales={list(scales)!r}; expected positive numbers, e.g. "
                                 "[0.75, 1.0, 1.25]")
        checkpoints = tuple(_checkpoint(c) for c in (self.checkpoints or ()))
        if len(set(map(str, checkpoints))) != len(checkpoints):
            raise ParameterError(f"checkpoints={list(checkpoints)} names a checkpoint twice")
        if not isinstance(self.amp, bool):
            raise ParameterError(f"amp={self.amp!r}; expected true or false")
        check_choice("reduction", self.reduction, REDUCTIONS)
        set_ = object.__setattr__
        set_(self, "checkpoint", _checkpoint(self.checkpoint))
        set_(self, "checkpoints", checkpoints)
        set_(self, "flips", flips)
        set_(self, "scales", tuple(float(s) for s in scales))
        set_(self, "slide", None if self.slide in (None, [], ()) else
             _positive_ints("slide", self.slide))
        set_(self, "out_size", _positive_ints("out_size", self.out_size))

    @property
    def tta(self) -> dict:
        """The keyword arguments of segkit.predict.inference.predict_probs."""
        return dict(flips=self.flips, scales=self.scales, slide=self.slide, amp=self.amp)

    def at(self, checkpoint) -> PredictOptions:
        """The same options for one other checkpoint (one member of a checkpoint vote)."""
        return replace(self, checkpoint=checkpoint, checkpoints=())

    @property
    def members(self) -> tuple:
        """The checkpoints predicted: `checkpoints`, or `checkpoint` alone."""
        return self.checkpoints or (self.checkpoint,)

    def identity(self, checkpoint_file, source, split: str) -> dict:
        """What a prediction folder's meta.json records and is compared on before reuse
        (paths by what they point at; the checkpoint also by its size and time, so a run
        trained again under the same name is predicted again)."""
        stamp = None
        if checkpoint_file and Path(checkpoint_file).is_file():  # a retrained run's new file
            info = Path(checkpoint_file).stat()
            stamp = [info.st_size, info.st_mtime_ns]
        return dict(checkpoint=str(Path(checkpoint_file).resolve()) if checkpoint_file else None,
                    checkpoint_stamp=stamp, source=str(Path(source).resolve()), split=split,
                    out_size=list(self.out_size), reduction=self.reduction,
                    flips=list(self.flips), scales=list(self.scales),
                    slide=list(self.slide) if self.slide else None, amp=self.amp)
