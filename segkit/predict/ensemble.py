"""Ensembles of prediction folders: the soft vote, greedy selection of models on validation
(Caruana et al., 2004, with replacement), each model and each ensemble scored side by side, and
the ensemble's submission. The voting rules themselves are segkit.submission.vote's.

Soft vote: the weighted mean of the models' quantised probabilities, argmax per pixel (a tie
between classes goes to the lower class index). Greedy selection: start from nothing, add
whichever model (a model already chosen may be chosen again) makes the soft vote's validation
mIoU highest, and stop when no addition improves it. How often a model was chosen is its weight.

Example:
    selection = greedy_selection(["a/val", "b/val"], truth)
    write_ensemble_submission(["a/test", "b/test"], "vote.csv", "soft", selection.weights)
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segkit.core.checks import check_choice
from segkit.core.classes import IGNORE_INDEX
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.metrics import confusion_matrix, miou, per_class_iou
from segkit.core.paths import atomic_folder
from segkit.results.predictions import (
    PredictionSet,
    folder_weights,
    save_probs,
    write_prediction_meta,
)
from segkit.submission.codec import SUBMISSION_SIZE
from segkit.submission.files import submission_writer
from segkit.submission.reader import iter_submission
from segkit.submission.vote import (
    argmax_classes,
    check_weights,
    disagreement,
    hard_vote,
    refuse_overwriting_inputs,
    weighted_vote,
)

ENSEMBLE_METHODS = ("soft", "hard", "greedy")
# the column of score_ensembles' table that scores each method as 07_ensemble names them
ENSEMBLE_COLUMNS = {"soft": "soft vote", "hard": "hard vote", "greedy": "greedy"}


def ensemble_column(method: str) -> str:
    """The score table's column of an ensemble method (07_ensemble's names).

    Example:
        >>> ensemble_column("soft")
        'soft vote'
    """
    check_choice("method", method, ENSEMBLE_METHODS)
    return ENSEMBLE_COLUMNS[method]


def iter_soft_vote(pred_dirs: Sequence[str | os.PathLike],
                   weights: Sequence[float] | None = None
                   ) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """Stream (image entry, weighted-mean uint8 probabilities (C, H, W), label map (H, W)).

    Images come in the first folder's order. The label map is the argmax of the unrounded
    mean, so it can differ from the argmax of the rounded probabilities at near-ties.

    Example:
        for image, probs, label_map in iter_soft_vote(["run_a/test", "run_b/test"]):
            pass
    """
    folders = PredictionSet.open(pred_dirs, minimum=1)
    total = folder_weights(weights, len(folders.dirs))[0].sum()
    for image in folders.images:
        acc = folders.weighted_sum(image["id"], weights)
        mean = np.clip(np.rint(acc / total), 0, 255).astype(np.uint8)
        yield image, mean, argmax_classes(acc)


def soft_vote(pred_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              weights: Sequence[float] | None = None) -> Path:
    """Write a prediction folder holding the weighted mean of the folders' probabilities.

    The folder is built beside `out_dir` and moved into place at the end, so an error leaves
    `out_dir` as it was. meta.json records the inputs and weights under "ensemble".

    Example:
        soft_vote(["runs/a/val", "runs/b/val"], "outputs/ensembles/ab_val", [2, 1])
    """
    folders = PredictionSet.open(pred_dirs, minimum=2)
    check = check_weights(weights, len(folders.dirs), "prediction folders")
    with atomic_folder(out_dir) as building:
        for image, probs, _ in iter_soft_vote(folders.dirs, weights):
            save_probs(building, image["id"], probs)
        write_prediction_meta(building, folders.images, folders.classes, folders.size,
                              folders.split, ensemble={"method": "soft",
                                                       "inputs": [str(d) for d in folders.dirs],
                                                       "weights": check.tolist()})
    return Path(out_dir)


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
        result = greedy_selection(["a/val", "b/val", "c/val"], truth)
        result.chosen, result.step_miou, result.single_miou
    """
    folders = PredictionSet.open(pred_dirs, minimum=1)
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
            probs = folders.probs(image["id"])
            label = truths.get(image["id"])
            if label is None:
                label = truths[image["id"]] = _truth_for(truth, image, probs[0].shape[1:],
                                                         num_classes, ignore_index)
            # the chosen models' sum (counts as weights; nothing chosen yet: zeros)
            base = folders.weighted_sum(image["id"], counts, probs) if counts.any() else \
                np.zeros(probs[0].shape, np.int32)
            for m in range(count):
                prediction = argmax_classes(base + probs[m])
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


def truth_at_size(coco, classes, size: Sequence[int]) -> dict[int, np.ndarray]:
    """Ground-truth label maps (cached ones) shrunk to `size` (H, W) by nearest neighbour: the
    truth that stored probabilities are scored against."""
    import cv2

    from segkit.coco.files import cached_label_maps, read_label

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
        scores = score_ensembles(["a/val", "b/val"], truth, soft={"soft vote": None},
                                 hard={"hard vote": None})
        scores.table
    """
    import pandas as pd

    folders = PredictionSet.open(pred_dirs, minimum=1)
    count, num_classes = len(folders.dirs), len(folders.classes)
    names = list(names) if names is not None else [str(d) for d in folders.dirs]
    if len(names) != count:
        raise ParameterError(f"{len(names)} names for {count} prediction folders")
    soft, hard = dict(soft or {}), dict(hard or {})
    columns = names + list(soft) + list(hard)
    if len(set(columns)) != len(columns):
        raise ParameterError(f"model and ensemble names must be distinct, got {columns}")
    for w in soft.values():
        folder_weights(w, count)  # bad weights stop here, before the first image
    hard_weights = {k: check_weights(w, count, "prediction folders") for k, w in hard.items()}
    matrices = {c: np.zeros((num_classes, num_classes), np.int64) for c in columns}
    rows = []
    for image in folders.images:
        probs = folders.probs(image["id"])
        label = _truth_for(truth, image, probs[0].shape[1:], num_classes, ignore_index)
        labels = np.stack([argmax_classes(p) for p in probs])
        for name, pred in zip(names, labels, strict=True):
            matrices[name] += confusion_matrix(pred, label, num_classes, ignore_index)
        for name, weights in soft.items():
            acc = folders.weighted_sum(image["id"], weights, probs)
            matrices[name] += confusion_matrix(argmax_classes(acc), label, num_classes,
                                               ignore_index)
        for name, weights in hard_weights.items():
            vote = weighted_vote(labels, weights, num_classes)
            matrices[name] += confusion_matrix(vote, label, num_classes, ignore_index)
        share = float(disagreement(labels).astype(bool).mean()) if count > 1 else 0.0
        rows.append((image["id"], image.get("file_name", ""), share))
    table = pd.DataFrame({c: np.append(per_class_iou(m), miou(m)) for c, m in matrices.items()},
                         index=list(folders.classes) + ["mIoU"])
    per_image = pd.DataFrame(rows, columns=["image_id", "file_name", "disagreement"])
    per_image = per_image.sort_values(["disagreement", "image_id"],
                                      ascending=[False, True]).reset_index(drop=True)
    return EnsembleScores(table, per_image)


def write_ensemble_submission(test_dirs: Sequence[str | os.PathLike], out_csv: str | os.PathLike,
                              method: str = "soft", weights: Sequence[float] | None = None
                              ) -> Path:
    """The ensemble's submission CSV from the models' test prediction folders.

    method "soft" (and "greedy": pass the selection's weights) soft-votes the
    stored probabilities; "hard" hard-votes each folder's submission.csv. With one model (or
    one with all the weight) the result is that model's own prediction.
    """
    check_choice("method", method, ENSEMBLE_METHODS)
    folders = PredictionSet.open(test_dirs, minimum=1)
    check = check_weights(weights, len(folders.dirs), "prediction folders")
    used = [k for k in range(len(folders.dirs)) if check[k] > 0]
    dirs, used_weights = [folders.dirs[k] for k in used], [float(check[k]) for k in used]
    num_classes = len(folders.classes)
    out_csv = Path(out_csv)
    refuse_overwriting_inputs(out_csv, [d / "submission.csv" for d in folders.dirs])
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


def disagreement_examples(pred_dirs: Sequence[str | os.PathLike], image_ids: Sequence[int],
                          data_root: str | os.PathLike) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(title, RGB image at the probabilities' size, each model's label map (M, H, W)) of the
    given validation images: what `segkit.viz.show_disagreement` draws."""
    import cv2

    from segkit.coco.files import read_image

    folders = PredictionSet.open(pred_dirs, minimum=2)
    by_id = {img["id"]: img for img in folders.images}
    unknown = [i for i in image_ids if i not in by_id]
    if not image_ids or unknown:
        raise ParameterError(f"image_ids must be ids of {folders.dirs[0]}'s images; unknown: "
                             f"{unknown[:5]}" if unknown else "no image ids given")
    rows = []
    for image_id in image_ids:
        labels = np.stack([argmax_classes(p) for p in folders.probs(image_id)])
        h, w = labels.shape[1:]
        image = cv2.resize(read_image(data_root, by_id[image_id]), (w, h),
                           interpolation=cv2.INTER_AREA)
        rows.append((str(by_id[image_id].get("file_name", image_id)), image, labels))
    return rows


def submit_ensemble(test_dirs: Sequence[str | os.PathLike], out_csv: str | os.PathLike,
                    method: str, weights: Sequence[float] | None = None,
                    selection: SelectionResult | None = None,
                    test_json: str | os.PathLike | None = None) -> list[float]:
    """07_ensemble's submission: the `method`'s vote of the test folders ("greedy" votes with
    the selection's weights, "soft" / "hard" with `weights`), written to `out_csv` and checked
    against `test_json` (a SubmissionError names the first problem). Returns the weight each
    folder got (0: not used)."""
    from segkit.core.errors import SubmissionError
    from segkit.submission.files import validate_submission

    check_choice("method", method, ENSEMBLE_METHODS)
    if method == "greedy" and selection is None:
        raise ParameterError("method='greedy' needs the greedy selection's result")
    vote_weights = selection.weights if method == "greedy" else weights
    path = write_ensemble_submission(test_dirs, out_csv, method, vote_weights)
    if test_json is not None:
        folders = PredictionSet.open(test_dirs)
        problems = validate_submission(path, test_json, num_classes=len(folders.classes),
                                       size=tuple(folders.size or SUBMISSION_SIZE))
        if problems:
            raise SubmissionError(f"{path}: {problems[0]}")
    return check_weights(vote_weights, len(test_dirs), "prediction folders").tolist()
