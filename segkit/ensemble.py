"""Ensembles: hard vote over submission CSVs, soft vote over prediction folders, greedy
selection of models on validation, and a per-pixel disagreement map.

Hard vote tie rule (one rule for every pixel). Models are ranked by weight, highest first,
then by their position in the input list. A class's score at a pixel is the sum of the weights
of the models voting for it. The pixel takes the class with the highest score; when several
classes share that score, it takes the one voted for by the best-ranked model among all models
voting for any of the tied classes. So with equal weights, permuting the inputs can change
only pixels where two or more classes tie exactly.

Soft vote: the weighted mean of the models' quantised probabilities, argmax per pixel (a tie
between classes goes to the lower class index).

Greedy selection (Caruana et al., 2004, with replacement): start from nothing, add whichever
model (a model already chosen may be chosen again) makes the soft vote's validation mIoU
highest, and stop when no addition improves it. How often a model was chosen is its weight.

Example:
    >>> import numpy as np
    >>> votes = np.array([[0, 1, 2], [1, 1, 0], [2, 0, 0]], np.uint8)   # 3 models, 3 pixels
    >>> weighted_vote(votes, num_classes=3)
    array([0, 1, 0], dtype=uint8)
    >>> weighted_vote(votes, weights=[1, 1, 3], num_classes=3)
    array([2, 0, 0], dtype=uint8)
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from segkit.classes import IGNORE_INDEX
from segkit.errors import ParameterError, SegkitError, SubmissionError
from segkit.metrics import confusion_matrix, miou
from segkit.predict import read_prediction_meta, write_prediction_meta
from segkit.submission import (
    NUM_CLASSES,
    SUBMISSION_SIZE,
    iter_submission,
    submission_writer,
)

# ---------------------------------------------------------------------------------------------
# Weights and the voting rule
# ---------------------------------------------------------------------------------------------


def _check_weights(weights: Sequence[float] | None, count: int, what: str) -> np.ndarray:
    """float64 weights, one per input, non-negative with a positive sum."""
    if weights is None:
        return np.ones(count)
    weights = list(weights)
    if len(weights) != count:
        raise ParameterError(f"{len(weights)} weights for {count} {what}: give one weight each")
    try:
        array = np.array([float(w) for w in weights])
    except (TypeError, ValueError):
        raise ParameterError(f"weights must be numbers, got {weights!r}") from None
    if not np.isfinite(array).all() or (array < 0).any() or array.sum() <= 0:
        raise ParameterError(f"weights must be finite, >= 0 and not all 0, got {weights!r}")
    return array


def model_ranking(weights: Sequence[float]) -> list[int]:
    """Input positions in tie-breaking order: highest weight first, then earlier listed.

    Example:
        >>> model_ranking([1, 2, 1, 2])
        [1, 3, 0, 2]
    """
    return sorted(range(len(weights)), key=lambda i: (-float(weights[i]), i))


def _exact_weights(weights: np.ndarray) -> tuple[np.ndarray, type]:
    """The weights in the cheapest type that sums them exactly.

    Weights that are whole numbers after scaling by a common denominator (1, 2, 0.5, 0.25:
    any float is a fraction, and these have small ones) become small integers: uint8 when
    they sum below 256, which makes the vote fast, else int64. Others stay float64, summed
    in ranking order so that equal sums come out bit-identical.
    """
    fractions = [Fraction(float(w)) for w in weights]
    scale = math.lcm(*(f.denominator for f in fractions))
    scaled = [int(f * scale) for f in fractions]
    divisor = math.gcd(*scaled)
    total = sum(scaled) // divisor
    if total < 256:
        return np.array([w // divisor for w in scaled], np.uint8), np.uint8
    if total < 2**62:
        return np.array([w // divisor for w in scaled], np.int64), np.int64
    return np.asarray(weights, np.float64), np.float64


def weighted_vote(labels: np.ndarray, weights: Sequence[float] | None = None,
                  num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Per-pixel weighted majority of M label maps `labels` (M, ...) -> uint8 (...).

    Ties follow the module's rule: among the classes with the highest summed weight, the one
    voted for by the best-ranked model (highest weight, then earliest) wins.

    Example:
        >>> weighted_vote(np.array([[3], [4]]), num_classes=5)   # a 1-1 tie: first model wins
        array([3], dtype=uint8)
    """
    labels = np.asarray(labels)
    if labels.ndim < 2 or labels.shape[0] < 1:
        raise ParameterError(f"labels must be (models, ...) with at least one model, got shape "
                             f"{labels.shape}")
    weights = _check_weights(weights, labels.shape[0], "label maps")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ParameterError(f"labels must lie in 0..{num_classes - 1}")
    order = model_ranking(weights)
    ranked = labels[order].reshape(len(order), -1).astype(np.uint8, copy=False)
    return _vote_ranked(ranked, weights[order]).reshape(labels.shape[1:])


def _vote_ranked(ranked: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The vote of (M, P) labels already in ranking order, with their weights.

    Instead of a score per class, each model gets the score of the class it voted for: the
    summed weight of the models agreeing with it. The winner is the best-ranked model holding
    the highest score: its class is the top class, and among tied classes the one with the
    best-ranked voter. M*M comparisons of uint8 rows, no per-class arrays.
    """
    count = ranked.shape[0]
    weights, dtype = _exact_weights(weights)
    agree = {}
    for a, b in itertools.combinations(range(count), 2):
        agree[a, b] = agree[b, a] = ranked[a] == ranked[b]
    term = np.empty(ranked.shape[1], dtype)
    winner_score = np.zeros(ranked.shape[1], dtype)
    winner_label = ranked[0].copy()
    score = np.empty_like(winner_score)
    change = np.empty_like(winner_label)
    for model in range(count):
        score.fill(0)
        for voter in range(count):  # ranking order: equal sums come out bit-identical
            if voter == model:
                score += weights[voter]
            elif weights[voter] == 1:
                np.add(score, agree[model, voter], out=score, casting="unsafe")
            elif weights[voter]:
                np.multiply(agree[model, voter], weights[voter], out=term)
                score += term
        # Strictly greater: an equal score leaves the better-ranked model's class in place.
        better = score > winner_score
        np.maximum(winner_score, score, out=winner_score)
        _take_where(winner_label, ranked[model], better, change)
    return winner_label


def _take_where(target: np.ndarray, source: np.ndarray, mask: np.ndarray,
                change: np.ndarray) -> None:
    """target[mask] = source[mask] for uint8 arrays, as wrapping arithmetic: several times
    faster than boolean indexing or np.copyto(where=) on a scattered mask."""
    np.subtract(source, target, out=change)
    np.multiply(change, mask.view(np.uint8), out=change)
    np.add(target, change, out=target)


def disagreement(label_maps: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Per pixel, the fraction of models whose label differs from their equal-weight vote.

    Example:
        >>> disagreement(np.array([[0, 1], [0, 2], [0, 2]]))
        array([0.        , 0.33333334], dtype=float32)
    """
    labels = np.asarray(label_maps)
    if labels.ndim < 2 or labels.shape[0] < 2:
        raise ParameterError(f"disagreement needs at least two label maps, got shape "
                             f"{labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or int(labels.min()) < 0 \
            or int(labels.max()) > 255:
        raise ParameterError("label maps must hold integers 0..255")
    vote = weighted_vote(labels, num_classes=256)
    return (labels != vote).mean(axis=0, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Hard vote over submission CSVs
# ---------------------------------------------------------------------------------------------

_END = object()


def hard_vote(csv_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike,
              weights: Sequence[float] | None = None, num_classes: int = NUM_CLASSES,
              size: tuple[int, int] = SUBMISSION_SIZE) -> Path:
    """Weighted per-pixel majority of submission CSVs, written as a new submission.

    Reads the inputs row by row together (memory holds one row of each), checks they list
    the same images in the same order with valid rows, and writes atomically: on any error
    a SubmissionError names the file and row and no output exists.

    Example:
        >>> hard_vote(["fold0.csv", "fold1.csv", "fold2.csv"], "vote.csv")   # doctest: +SKIP
    """
    paths = [Path(p) for p in csv_paths]
    if len(paths) < 2:
        raise ParameterError(f"a hard vote needs at least 2 submissions, got {len(paths)}")
    weights = _check_weights(weights, len(paths), "submissions")
    order = model_ranking(weights)
    ranked_weights = weights[order]
    readers = [iter_submission(p, num_classes, size) for p in paths]
    out_path = Path(out_path)
    with submission_writer(out_path, num_classes, size) as writer:
        for rows in itertools.zip_longest(*readers, fillvalue=_END):
            _check_same_row(paths, rows)
            ranked = np.stack([rows[i][2] for i in order])
            label_map = _vote_ranked(ranked, ranked_weights).reshape(size)
            writer.write_row(rows[0][1], label_map)
    return out_path


def _check_same_row(paths: list[Path], rows: tuple) -> None:
    """All inputs are at the same image; else a SubmissionError naming the file and row."""
    ref = next(k for k, r in enumerate(rows) if r is not _END)
    ref_row, ref_name = rows[ref][0], rows[ref][1]
    for path, other in zip(paths, rows, strict=True):
        if other is _END:
            raise SubmissionError(
                f"{path}: has no row {ref_row}, but {paths[ref]} row {ref_row} has image "
                f"{ref_name!r}; inputs must list the same images in the same order")
        if other[1] != ref_name:
            raise SubmissionError(
                f"{path} row {other[0]}: image {other[1]!r}, but {paths[ref]} row {ref_row} "
                f"has {ref_name!r}; inputs must list the same images in the same order")


# ---------------------------------------------------------------------------------------------
# Prediction folders
# ---------------------------------------------------------------------------------------------

@dataclass
class _Folders:
    """Prediction folders checked to agree: classes, size and the same images."""

    dirs: list[Path]
    classes: list[str]
    size: list[int]
    split: str
    images: list[dict] = field(default_factory=list)  # in the first folder's order


def _read_folders(pred_dirs: Sequence[str | os.PathLike], minimum: int) -> _Folders:
    dirs = [Path(d) for d in pred_dirs]
    if len(dirs) < minimum:
        raise ParameterError(f"need at least {minimum} prediction folders, got {len(dirs)}")
    metas = []
    for d in dirs:
        meta = read_prediction_meta(d)
        missing = [k for k in ("classes", "images") if k not in meta]
        if missing:
            raise SegkitError(f"{d / 'meta.json'}: missing {', '.join(missing)}")
        metas.append(meta)
    first, first_ids = metas[0], [img["id"] for img in metas[0]["images"]]
    for d, meta in zip(dirs[1:], metas[1:], strict=True):
        if meta["classes"] != first["classes"]:
            raise SegkitError(f"{d / 'meta.json'}: classes {meta['classes']} differ from "
                              f"{dirs[0]}'s {first['classes']}")
        if meta.get("size") != first.get("size"):
            raise SegkitError(f"{d / 'meta.json'}: size {meta.get('size')} differs from "
                              f"{dirs[0]}'s {first.get('size')}")
        ids = {img["id"] for img in meta["images"]}
        lacking = [i for i in first_ids if i not in ids]
        extra = sorted(ids - set(first_ids))
        if lacking or extra:
            what = (f"lacks image ids {lacking[:5]}" if lacking else "") + \
                (" and " if lacking and extra else "") + \
                (f"has extra image ids {extra[:5]}" if extra else "")
            raise SegkitError(f"{d / 'meta.json'}: {what} compared with {dirs[0]}; the folders "
                              "must cover the same images")
    return _Folders(dirs, list(first["classes"]), first.get("size"), first.get("split", ""),
                    list(first["images"]))


def _load_quantised(pred_dir: Path, image_id, num_classes: int) -> np.ndarray:
    """One image's stored uint8 (C, H, W) probabilities, as stored (no conversion to float:
    sums of uint8 are exact). segkit.predict.load_probs converts to float32, which the
    voting does not need."""
    path = pred_dir / "probs" / f"{image_id}.npy"
    try:
        probs = np.load(path)
    except FileNotFoundError:
        raise SegkitError(f"{path}: no stored probabilities for image id {image_id}") from None
    except (OSError, ValueError) as exc:
        raise SegkitError(f"{path}: unreadable probabilities for image id {image_id} "
                          f"({exc})") from None
    if probs.dtype != np.uint8 or probs.ndim != 3 or probs.shape[0] != num_classes:
        raise SegkitError(f"{path}: expected uint8 ({num_classes}, H, W) probabilities, got "
                          f"{probs.dtype} {probs.shape}")
    return probs


def _argmax_classes(scores: np.ndarray) -> np.ndarray:
    """argmax over axis 0 of (C, H, W), lowest class on ties, as uint8. A running maximum
    over the few classes beats np.argmax(axis=0), which transposes a copy first."""
    best = scores[0].copy()
    label = np.zeros(scores.shape[1:], np.uint8)
    change = np.empty_like(label)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        np.maximum(best, scores[c], out=best)
        _take_where(label, np.full_like(label, c), better, change)
    return label


def _folder_weights(weights, count: int) -> tuple[np.ndarray, type]:
    """Weights and the accumulator type: exact integers when the weights are whole numbers."""
    weights = _check_weights(weights, count, "prediction folders")
    if (weights == np.round(weights)).all() and weights.sum() * 255 < 2**31:
        return weights.astype(np.int32), np.int32
    return weights, np.float64


def iter_soft_vote(pred_dirs: Sequence[str | os.PathLike],
                   weights: Sequence[float] | None = None
                   ) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """Stream (image entry, weighted-mean uint8 probabilities (C, H, W), label map (H, W)).

    Images come in the first folder's order. The label map is the argmax of the unrounded
    mean, so it can differ from the argmax of the rounded probabilities at near-ties.

    Example:
        >>> for image, probs, label_map in iter_soft_vote(["run_a/test", "run_b/test"]):
        ...     pass                                                           # doctest: +SKIP
    """
    folders = _read_folders(pred_dirs, minimum=1)
    weights, acc_type = _folder_weights(weights, len(folders.dirs))
    total = weights.sum()
    num_classes = len(folders.classes)
    for image in folders.images:
        acc, shape = None, None
        for d, w in zip(folders.dirs, weights, strict=True):
            probs = _load_quantised(d, image["id"], num_classes)
            if shape is None:
                shape, acc = probs.shape, np.zeros(probs.shape, acc_type)
            elif probs.shape != shape:
                raise SegkitError(f"{d}: probabilities of image id {image['id']} are "
                                  f"{probs.shape}, but {folders.dirs[0]}'s are {shape}")
            if w:
                acc += probs * w if w != 1 else probs
        mean = np.clip(np.rint(acc / total), 0, 255).astype(np.uint8)
        yield image, mean, _argmax_classes(acc)


def soft_vote(pred_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              weights: Sequence[float] | None = None) -> Path:
    """Write a prediction folder holding the weighted mean of the folders' probabilities.

    The folder is built beside `out_dir` and moved into place at the end, so an error leaves
    `out_dir` as it was. meta.json records the inputs and weights under "ensemble".

    Example:
        >>> soft_vote(["runs/a/val", "runs/b/val"], "outputs/ensembles/ab_val", [2, 1])  # doctest: +SKIP
    """
    from segkit.predict import save_probs

    folders = _read_folders(pred_dirs, minimum=2)
    check = _check_weights(weights, len(folders.dirs), "prediction folders")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for image, probs, _ in iter_soft_vote(folders.dirs, weights):
            save_probs(building, image["id"], probs)
        write_prediction_meta(building, folders.images, folders.classes, folders.size,
                              folders.split, ensemble={"method": "soft",
                                                       "inputs": [str(d) for d in folders.dirs],
                                                       "weights": check.tolist()})
        _replace_folder(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out_dir


def _replace_folder(new: Path, target: Path) -> None:
    """Move `new` onto `target`, removing an older `target` only once `new` is in place."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def soft_vote_submission(pred_dirs: Sequence[str | os.PathLike], out_csv: str | os.PathLike,
                         weights: Sequence[float] | None = None) -> Path:
    """Soft-vote the folders straight into a submission CSV (rows in the first folder's order,
    image_id = each image's file_name).

    Example:
        >>> soft_vote_submission(["runs/a/test", "runs/b/test"], "vote.csv")  # doctest: +SKIP
    """
    folders = _read_folders(pred_dirs, minimum=2)
    votes = iter_soft_vote(folders.dirs, weights)
    first = next(votes, None)
    if first is None:
        raise SegkitError(f"{folders.dirs[0]}: no images to vote on")
    size = first[2].shape
    with submission_writer(out_csv, len(folders.classes), size) as writer:
        for image, _, label_map in itertools.chain([first], votes):
            writer.write_row(image["file_name"], label_map)
    return Path(out_csv)


# ---------------------------------------------------------------------------------------------
# Greedy ensemble selection
# ---------------------------------------------------------------------------------------------

@dataclass
class SelectionResult:
    """What greedy selection found.

    models: the prediction folders, as given. chosen: indices into `models` in the order they
    were added (repeats allowed). weights: times each model was chosen (pass to soft_vote).
    step_miou: validation mIoU of the ensemble after each addition. single_miou: each model
    alone.
    """

    models: list[str]
    chosen: list[int]
    weights: list[int]
    step_miou: list[float]
    single_miou: list[float]

    @property
    def best_miou(self) -> float:
        return self.step_miou[-1] if self.step_miou else float("nan")

    def table(self) -> list[dict]:
        """One row per step, for a notebook DataFrame."""
        return [{"step": k + 1, "added": self.models[m], "miou": score}
                for k, (m, score) in enumerate(zip(self.chosen, self.step_miou, strict=True))]


def _truth_for(truth, image: dict, shape: tuple[int, ...], num_classes: int,
               ignore_index: int) -> np.ndarray:
    label = truth(image) if callable(truth) else truth.get(image["id"]) \
        if isinstance(truth, Mapping) else None
    if label is None:
        raise ParameterError(f"no ground-truth label map for image id {image['id']} "
                             f"({image.get('file_name', '')})")
    label = np.asarray(label)
    if label.shape != shape:
        raise ParameterError(f"ground truth of image id {image['id']} is {label.shape}, the "
                             f"probabilities are {shape}: give label maps at the probs' size")
    bad = (label >= num_classes) & (label != ignore_index)
    if bad.any() or (label < 0).any():
        raise ParameterError(f"ground truth of image id {image['id']} holds values outside "
                             f"0..{num_classes - 1} and {ignore_index}")
    return label


def greedy_selection(pred_dirs: Sequence[str | os.PathLike],
                     truth: Mapping[int, np.ndarray] | Callable[[dict], np.ndarray],
                     max_models: int = 10, ignore_index: int = IGNORE_INDEX
                     ) -> SelectionResult:
    """Greedy forward selection with replacement (Caruana et al., 2004) on validation mIoU.

    Each step tries adding every model to the current soft vote (sum of the chosen models'
    probabilities, repeats counting again) and keeps the addition with the highest mIoU
    (ties: the earlier-listed model); it stops when that does not beat the current mIoU or
    when `max_models` models have been added. mIoU comes from one confusion matrix over all
    images, as the competition scores.

    `truth` maps image id -> label map at the probabilities' size (or is a function of the
    image entry); pixels equal to `ignore_index` are not scored. Memory holds one image of
    every model at a time; the probabilities are re-read from disk each step (the OS file
    cache keeps them), since a validation set of every model rarely fits in memory.

    Example:
        >>> result = greedy_selection(["a/val", "b/val", "c/val"], truth)     # doctest: +SKIP
        >>> result.chosen, result.step_miou, result.single_miou              # doctest: +SKIP
    """
    folders = _read_folders(pred_dirs, minimum=1)
    if not isinstance(max_models, int) or max_models < 1:
        raise ParameterError(f"max_models must be a positive integer, got {max_models!r}")
    num_classes, count = len(folders.classes), len(folders.dirs)
    truths: dict = {}
    counts = np.zeros(count, np.int64)
    chosen: list[int] = []
    step_miou: list[float] = []
    single_miou: list[float] = []
    current = -math.inf
    while len(chosen) < max_models:
        matrices = np.zeros((count, num_classes, num_classes), np.int64)
        for image in folders.images:
            probs = [_load_quantised(d, image["id"], num_classes) for d in folders.dirs]
            shape = probs[0].shape[1:]
            label = truths.get(image["id"])
            if label is None:
                label = truths[image["id"]] = _truth_for(truth, image, shape, num_classes,
                                                         ignore_index)
            base = np.zeros(probs[0].shape, np.int32)
            for m in np.flatnonzero(counts):
                base += probs[m].astype(np.int32) * int(counts[m])
            for m in range(count):
                if probs[m].shape != probs[0].shape:
                    raise SegkitError(f"{folders.dirs[m]}: probabilities of image id "
                                      f"{image['id']} are {probs[m].shape}, not "
                                      f"{probs[0].shape}")
                prediction = _argmax_classes(base + probs[m])
                matrices[m] += confusion_matrix(prediction, label, num_classes, ignore_index)
        scores = [miou(cm) for cm in matrices]
        if not chosen:
            single_miou = scores
        best = max(range(count), key=lambda m: (np.nan_to_num(scores[m], nan=-1.0), -m))
        if not scores[best] > current:
            break
        current = scores[best]
        chosen.append(best)
        counts[best] += 1
        step_miou.append(float(scores[best]))
    return SelectionResult([str(d) for d in folders.dirs], chosen, counts.tolist(), step_miou,
                           [float(s) for s in single_miou])


# ---------------------------------------------------------------------------------------------
# Notebook helpers: predictions of runs, scores side by side, disagreement, the submission
# ---------------------------------------------------------------------------------------------

ENSEMBLE_METHODS = ("soft", "hard", "greedy")


def _same_file(recorded, path: Path) -> bool:
    return bool(recorded) and Path(recorded).resolve() == Path(path).resolve()


def predict_run(run_dir: str | os.PathLike, coco_file: str | os.PathLike,
                data_root: str | os.PathLike, split: str, out_dir: str | os.PathLike | None = None,
                checkpoint: str = "best", progress: bool = False, **predict_options) -> Path:
    """The prediction folder of a run's checkpoint on a COCO file, predicted unless a complete
    folder of the same checkpoint and file is already there.

    Default folder: outputs/predictions/<run folder name>/<split>. `predict_options` go to
    `segkit.predict.predict_dataset` (flips, scales, slide, ...).

    Example:
        >>> predict_run("outputs/runs/lite0_fold0", "data/test.json", "data", "test")  # doctest: +SKIP
    """
    from segkit.classes import ClassTable
    from segkit.coco import load_coco
    from segkit.paths import outputs_dir
    from segkit.predict import (
        check_model_classes,
        load_model,
        predict_dataset,
        resolve_checkpoint,
    )

    run_dir = Path(run_dir)
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    out_dir = Path(out_dir) if out_dir else outputs_dir() / "predictions" / run_dir.name / split
    coco = load_coco(coco_file)
    if (out_dir / "meta.json").exists():
        try:
            meta = read_prediction_meta(out_dir)
        except (SegkitError, ValueError):
            meta = {}
        same = {k: list(v) if isinstance(v, tuple) else v
                for k, v in predict_options.items() if k in ("flips", "scales")}
        same["split"] = split
        # paths by what they point at: 05_predict may have written them relative or absolute
        same_files = all(_same_file(meta.get(k), path)
                         for k, path in (("checkpoint", ckpt), ("source", coco.path)))
        labels_ok = not predict_options.get("save_full_labels") or (out_dir / "labels").is_dir()
        if same_files and labels_ok and all(meta.get(k) == v for k, v in same.items()):
            return out_dir
    model = load_model(run_dir, checkpoint)
    check_model_classes(model, ClassTable.for_coco(coco.categories).names, str(coco.path))
    return predict_dataset(model, coco, data_root, out_dir, split=split, progress=progress,
                           **predict_options)


def truth_at_size(coco, classes, size: Sequence[int]) -> dict[int, np.ndarray]:
    """Ground-truth label maps (cached ones) shrunk to `size` (H, W) by nearest neighbour: the
    truth that stored probabilities are scored against."""
    import cv2

    from segkit.coco import cached_label_maps, read_label

    paths = cached_label_maps(coco, classes)
    height, width = int(size[0]), int(size[1])
    return {image_id: cv2.resize(read_label(path), (width, height),
                                 interpolation=cv2.INTER_NEAREST)
            for image_id, path in paths.items()}


@dataclass
class EnsembleScores:
    """Validation scores side by side.

    table: rows = classes then "mIoU", one column per model and per ensemble (IoU, nan where a
    class is in neither prediction nor truth). per_image: image_id, file_name and the share of
    pixels where the models disagree (most first; zeros with a single model).
    """

    table: object  # pandas DataFrame
    per_image: object  # pandas DataFrame

    @property
    def miou(self):
        return self.table.loc["mIoU"]


def score_ensembles(pred_dirs: Sequence[str | os.PathLike],
                    truth: Mapping[int, np.ndarray] | Callable[[dict], np.ndarray],
                    names: Sequence[str] | None = None,
                    soft: Mapping[str, Sequence[float] | None] | None = None,
                    hard: Mapping[str, Sequence[float] | None] | None = None,
                    ignore_index: int = IGNORE_INDEX) -> EnsembleScores:
    """Per-class IoU and mIoU of each model and of each ensemble, in one pass over the images.

    `soft` maps an ensemble's name to its weights (None = equal): the weighted mean of the
    probabilities, argmax. `hard` likewise: the weighted vote of the models' label maps
    (`weighted_vote`, the tie rule of hard_vote). One confusion matrix per column over all
    images, as the competition scores.

    Example:
        >>> scores = score_ensembles(["a/val", "b/val"], truth, soft={"soft vote": None},
        ...                          hard={"hard vote": None})            # doctest: +SKIP
        >>> scores.table                                                   # doctest: +SKIP
    """
    import pandas as pd

    folders = _read_folders(pred_dirs, minimum=1)
    count, num_classes = len(folders.dirs), len(folders.classes)
    names = list(names) if names is not None else [str(d) for d in folders.dirs]
    if len(names) != count:
        raise ParameterError(f"{len(names)} names for {count} prediction folders")
    soft, hard = dict(soft or {}), dict(hard or {})
    columns = names + list(soft) + list(hard)
    if len(set(columns)) != len(columns):
        raise ParameterError(f"model and ensemble names must be distinct, got {columns}")
    soft_weights = {k: _folder_weights(w, count) for k, w in soft.items()}
    hard_weights = {k: _check_weights(w, count, "prediction folders") for k, w in hard.items()}
    matrices = {c: np.zeros((num_classes, num_classes), np.int64) for c in columns}
    rows = []
    for image in folders.images:
        probs = [_load_quantised(d, image["id"], num_classes) for d in folders.dirs]
        for d, p in zip(folders.dirs, probs, strict=True):
            if p.shape != probs[0].shape:
                raise SegkitError(f"{d}: probabilities of image id {image['id']} are {p.shape},"
                                  f" not {probs[0].shape}")
        label = _truth_for(truth, image, probs[0].shape[1:], num_classes, ignore_index)
        labels = np.stack([_argmax_classes(p) for p in probs])
        for name, pred in zip(names, labels, strict=True):
            matrices[name] += confusion_matrix(pred, label, num_classes, ignore_index)
        for name, (weights, acc_type) in soft_weights.items():
            acc = np.zeros(probs[0].shape, acc_type)
            for p, w in zip(probs, weights, strict=True):
                if w:
                    acc += p * w
            matrices[name] += confusion_matrix(_argmax_classes(acc), label, num_classes,
                                               ignore_index)
        for name, weights in hard_weights.items():
            vote = weighted_vote(labels, weights, num_classes)
            matrices[name] += confusion_matrix(vote, label, num_classes, ignore_index)
        share = float(disagreement(labels).astype(bool).mean()) if count > 1 else 0.0
        rows.append((image["id"], image.get("file_name", ""), share))
    from segkit.metrics import per_class_iou

    table = pd.DataFrame({c: np.append(per_class_iou(m), miou(m)) for c, m in matrices.items()},
                         index=list(folders.classes) + ["mIoU"])
    per_image = pd.DataFrame(rows, columns=["image_id", "file_name", "disagreement"])
    per_image = per_image.sort_values(["disagreement", "image_id"],
                                      ascending=[False, True]).reset_index(drop=True)
    return EnsembleScores(table, per_image)


def show_disagreement(pred_dirs: Sequence[str | os.PathLike], image_ids: Sequence[int],
                      data_root: str | os.PathLike, classes, names: Sequence[str] | None = None):
    """One row per image: the image at the probabilities' size, each model's label map over
    it, and the per-pixel disagreement (share of models differing from the vote)."""
    import cv2
    import matplotlib.pyplot as plt

    from segkit.coco import read_image
    from segkit.viz import legend_handles, overlay

    folders = _read_folders(pred_dirs, minimum=2)
    count, num_classes = len(folders.dirs), len(folders.classes)
    names = list(names) if names is not None else [d.parent.name or str(d) for d in folders.dirs]
    if len(names) != count:
        raise ParameterError(f"{len(names)} names for {count} prediction folders")
    by_id = {img["id"]: img for img in folders.images}
    unknown = [i for i in image_ids if i not in by_id]
    if not image_ids or unknown:
        raise ParameterError(f"image_ids must be ids of {folders.dirs[0]}'s images; unknown: "
                             f"{unknown[:5]}" if unknown else "show_disagreement needs image ids")
    fig, axes = plt.subplots(len(image_ids), count + 2, figsize=(3 * (count + 2),
                                                                  3 * len(image_ids)),
                             squeeze=False)
    present = set()
    for r, image_id in enumerate(image_ids):
        labels = np.stack([_argmax_classes(_load_quantised(d, image_id, num_classes))
                           for d in folders.dirs])
        h, w = labels.shape[1:]
        image = cv2.resize(read_image(data_root, by_id[image_id]), (w, h),
                           interpolation=cv2.INTER_AREA)
        panels = [image] + [overlay(image, lab, classes, alpha=0.6) for lab in labels]
        present.update(np.unique(labels).tolist())
        titles = ["image"] + names
        for c, (panel, title) in enumerate(zip(panels, titles, strict=True)):
            axes[r, c].imshow(panel)
            axes[r, c].set_title(title if r == 0 else "")
        shown = axes[r, -1].imshow(disagreement(labels), cmap="magma", vmin=0, vmax=1)
        axes[r, -1].set_title("disagreement" if r == 0 else "")
        axes[r, 0].set_ylabel(str(by_id[image_id].get("file_name", image_id)))
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(shown, ax=axes[:, -1].tolist(), fraction=0.05, label="share of models off the vote")
    fig.legend(handles=legend_handles(classes, sorted(present)), loc="lower center",
               ncol=min(6, len(present)), frameon=False)
    return fig


def write_ensemble_submission(test_dirs: Sequence[str | os.PathLike], out_csv: str | os.PathLike,
                              method: str = "soft", weights: Sequence[float] | None = None
                              ) -> Path:
    """The ensemble's submission CSV from the models' test prediction folders.

    method "soft" (and "greedy": pass the selection's weights) soft-votes the
    stored probabilities; "hard" hard-votes each folder's submission.csv. With one model (or
    one with all the weight) the result is that model's own prediction.
    """
    check_method(method)
    folders = _read_folders(test_dirs, minimum=1)
    check = _check_weights(weights, len(folders.dirs), "prediction folders")
    used = [k for k in range(len(folders.dirs)) if check[k] > 0]
    dirs, used_weights = [folders.dirs[k] for k in used], [float(check[k]) for k in used]
    num_classes = len(folders.classes)
    out_csv = Path(out_csv)
    if method == "hard":
        csvs = [d / "submission.csv" for d in dirs]
        for path in csvs:
            if not path.exists():
                raise SegkitError(f"{path}: no submission CSV in the prediction folder (hard "
                                  "votes need the test split's submission.csv)")
        size = tuple(folders.size) if folders.size else SUBMISSION_SIZE
        if len(csvs) > 1:
            return hard_vote(csvs, out_csv, used_weights, num_classes, size)
        with submission_writer(out_csv, num_classes, size) as writer:
            for _, name, values in iter_submission(csvs[0], num_classes, size):
                writer.write_row(name, np.asarray(values).reshape(size))
        return out_csv
    votes = iter_soft_vote(dirs, used_weights)
    first = next(votes, None)
    if first is None:
        raise SegkitError(f"{folders.dirs[0]}: no images to vote on")
    with submission_writer(out_csv, num_classes, first[2].shape) as writer:
        for image, _, label_map in itertools.chain([first], votes):
            writer.write_row(image["file_name"], label_map)
    return out_csv


def check_method(method: str) -> str:
    """An ensemble method name of ENSEMBLE_METHODS, else a ParameterError listing them."""
    if method not in ENSEMBLE_METHODS:
        raise ParameterError(f"method={method!r}; allowed: {', '.join(ENSEMBLE_METHODS)}")
    return method


def common_validation(run_dirs: Sequence[str | os.PathLike]) -> tuple[Path, Path]:
    """(data root, validation COCO file) shared by all the runs (from their params.json);
    runs validated on different files cannot be compared: a SegkitError names the run."""
    from segkit.predict import run_data

    if not run_dirs:
        raise ParameterError("no run folders given")
    first = run_data(run_dirs[0])
    for run_dir in run_dirs[1:]:
        root, val = run_data(run_dir)
        if Path(val).resolve() != Path(first[1]).resolve():
            raise SegkitError(f"{run_dir}: validated on {val}, but {run_dirs[0]} on "
                              f"{first[1]}; ensembles compare runs of the same fold")
    return Path(first[0]), Path(first[1])


def find_runs(fold: int = 0, runs_dir: str | os.PathLike | None = None,
              checkpoint: str = "best") -> list[Path]:
    """Run folders under `runs_dir` (default outputs/runs) that hold a checkpoint and were
    validated on fold `fold`'s validation file, sorted by name."""
    from segkit.predict import resolve_checkpoint, run_data
    from segkit.report import find_runs as runs_with_checkpoints
    from segkit.train import fold_files

    try:
        val = fold_files(int(fold))[1].resolve()
    except ParameterError:
        return []
    found = []
    for run_dir in runs_with_checkpoints(runs_dir):
        try:
            resolve_checkpoint(run_dir, checkpoint)
            if Path(run_data(run_dir)[1]).resolve() == val:
                found.append(run_dir)
        except SegkitError:
            continue
    return found
