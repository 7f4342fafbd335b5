"""Prediction folders: what 05_predict writes and 06 / 07 / 08 read, and how they are made.

A prediction folder (`outputs/predictions/<run>/<split>/`) holds:
    meta.json            classes, size, split, the COCO image entries in order, and everything
                         that made these predictions (checkpoint, source file, TTA, slide,
                         out_size, reduction, amp): a folder is reused only when all of it
                         matches what is asked
    probs/<image_id>.npy uint8 (C, H, W): class probabilities quantised as round(p * 255)
    labels/<image_id>.png full-size label maps (when asked: scoring at the annotated size)
    per_image.csv        for the validation split: each image's mIoU, lowest first (05's table)
    submission.csv       for the test split

Example:
    predict_run("efficientnet_lite0_fold0", "val", PredictOptions(flips=["h"])) predicts the
    run's validation file with flip TTA, or reuses the folder made exactly that way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segkit.core.errors import SegkitError, SubmissionError
from segkit.core.paths import atomic_folder, outputs_dir, write_table
from segkit.predict.options import PredictOptions
from segkit.results.predictions import (
    PER_IMAGE_FILE,
    Evaluation,
    PredictionFolder,
    evaluate,
    read_prediction_meta,
    save_probs,
    write_prediction_meta,
)
from segkit.results.runs import Run


def _batches(images: list[dict], batch_size: int) -> list[list[dict]]:
    """Consecutive images of one size, at most `batch_size` each."""
    batches, current = [], []
    for img in images:
        if current and (len(current) == batch_size or
                        (current[0]["height"], current[0]["width"]) != (img["height"], img["width"])):
            batches.append(current)
            current = []
        current.append(img)
    return batches + [current] if current else batches


def predict_dataset(model, coco, data_root, out_dir, options: PredictOptions = PredictOptions(),
                    *, split: str = "test", batch_size: int = 4, save_full_labels: bool = False,
                    progress: bool = True, submission: bool | None = None) -> Path:
    """Predict every image of a COCO file into a prediction folder (see the module docstring).

    Writes probs at `options.out_size` for each image, `labels/<id>.png` (full size) when
    asked, the submission CSV for the test split (`submission`: True / False for any split),
    and meta.json; all of it in a folder beside
    `out_dir` that replaces it whole at the end, so `out_dir` is complete or as it was.
    """
    from tqdm import tqdm

    from segkit.coco.files import read_image, write_png
    from segkit.predict.inference import model_classes, predict_probs, reduce_label, resize_probs

    classes = model_classes(model)
    for img in coco.images:  # fail before predicting anything if an image is missing
        if not (Path(data_root) / img["file_name"]).exists():
            raise SegkitError(f"{Path(data_root) / img['file_name']}: image file missing "
                              f"(image id {img['id']} of {coco.path})")
    out_size = options.out_size
    need_full = save_full_labels or options.reduction != "probs"
    small_labels = {}
    bar = tqdm(total=len(coco.images), desc=f"predict {split}", disable=not progress)
    with atomic_folder(out_dir) as building:
        (building / "probs").mkdir()
        for batch in _batches(coco.images, batch_size):
            images = [read_image(data_root, img) for img in batch]
            full = predict_probs(model, images, None if need_full else out_size, **options.tta)
            for img, p in zip(batch, full):
                small = p
                if need_full:
                    label = p.argmax(0).astype(np.uint8)
                    if save_full_labels:
                        write_png(building / "labels" / f"{img['id']}.png", label)
                    small = resize_probs(p, out_size)
                save_probs(building, img["id"], small)
                small_labels[img["id"]] = (
                    small.argmax(0).astype(np.uint8) if options.reduction == "probs"
                    else reduce_label(label, out_size, options.reduction))
            bar.update(len(batch))
        bar.close()
        if split == "test" if submission is None else submission:
            from segkit.submission.files import write_submission

            write_submission(building / "submission.csv",
                             [img["file_name"] for img in coco.images],
                             (small_labels[img["id"]] for img in coco.images),
                             num_classes=len(classes), size=out_size)
        identity = options.identity(getattr(model, "segkit_checkpoint", None), coco.path, split)
        write_prediction_meta(building, coco.images, classes, out_size, **identity)
    return Path(out_dir)


def reusable(out_dir: str | os.PathLike, wanted: dict, labels: bool = False) -> bool:
    """Whether `out_dir` holds a complete prediction made exactly as `wanted` (an identity of
    PredictOptions): meta.json matches and every file it promises is there."""
    out_dir = Path(out_dir)
    if not (out_dir / "meta.json").exists():
        return False
    try:
        meta = read_prediction_meta(out_dir)
        folder = PredictionFolder(out_dir)
        return all(meta.get(k) == v for k, v in wanted.items()) and \
            not folder.missing_files(labels)
    except SegkitError:
        return False


def predict_run(run: str | os.PathLike | Run, split: str,
                options: PredictOptions = PredictOptions(), *, coco_file=None, data_root=None,
                out_dir: str | os.PathLike | None = None, progress: bool = False,
                save_full_labels: bool = False, batch_size: int = 4) -> PredictionFolder:
    """The prediction folder of a run's `options.checkpoint` on a COCO file, predicted unless a
    complete folder made the same way (`PredictOptions.identity`) is already there; a folder
    made otherwise, or missing a file, is predicted again whole.

    coco_file: default the run's validation file for split "val", else `data_root`/test.json;
    data_root: default the run's. Default folder: outputs/predictions/<run name>/<split>.

    Example:
        predict_run("efficientnet_lite0_fold0", "test", PredictOptions(flips=["h"]))
    """
    from segkit.coco.files import load_coco
    from segkit.core.classes import ClassTable
    from segkit.predict.inference import check_model_classes, load_model

    run = Run.open(run)
    root = Path(data_root) if data_root else run.data_root
    if coco_file is None:  # the run's validation file is checked against its data.json
        coco_file = run.data()[1] if split == "val" else root / "test.json"
        if coco_file is None:
            raise SegkitError(f"{run.path}: a full-data run (fold=all) without a holdout_file "
                              "has no validation file to predict")
    coco = load_coco(coco_file)
    ckpt = run.checkpoint(options.checkpoint)
    out_dir = Path(out_dir) if out_dir else outputs_dir() / "predictions" / run.name / split
    if reusable(out_dir, options.identity(ckpt, coco.path, split), save_full_labels):
        return PredictionFolder(out_dir)
    model = load_model(run, options.checkpoint)
    check_model_classes(model, ClassTable.for_coco(coco.categories).names, str(coco.path))
    predict_dataset(model, coco, root, out_dir, options, split=split, progress=progress,
                    save_full_labels=save_full_labels, batch_size=batch_size)
    return PredictionFolder(out_dir)


def prediction_dir(run: Run, split: str, name: str = "") -> Path:
    """Where 05_predict and `segkit predict` put a run's predictions of a split:
    outputs/predictions/<name or run name>/<split>."""
    return outputs_dir() / "predictions" / (name or run.name) / split


def predict_validation(run: str | os.PathLike | Run, options: PredictOptions = PredictOptions(),
                       *, val_file=None, data_root=None, name: str = "", batch_size: int = 4,
                       progress: bool = False) -> tuple[PredictionFolder, Evaluation]:
    """05_predict's validation half: predict the run's validation file (or `val_file`) with
    full-size labels and score it at the annotated size."""
    from segkit.coco.files import load_coco

    run = Run.open(run)
    coco = load_coco(val_file or run.data()[1])
    folder = predict_run(run, "val", options, coco_file=coco.path, data_root=data_root,
                         out_dir=prediction_dir(run, "val", name), save_full_labels=True,
                         batch_size=batch_size, progress=progress)
    evaluation = evaluate(folder.path, coco)
    write_table(evaluation.per_image.set_index("image_id"), folder.path / PER_IMAGE_FILE)
    return folder, evaluation


def predict_test(run: str | os.PathLike | Run, options: PredictOptions = PredictOptions(), *,
                 test_file: str = "test.json", data_root=None, name: str = "",
                 batch_size: int = 4, progress: bool = False) -> PredictionFolder:
    """05_predict's test half: predict `data_root`/`test_file` and write the submission CSV,
    checked against the test file (a SubmissionError names the first problem)."""
    from segkit.submission.files import validate_submission

    run = Run.open(run)
    root = Path(data_root) if data_root else run.data_root
    folder = predict_run(run, "test", options, coco_file=root / test_file, data_root=root,
                         out_dir=prediction_dir(run, "test", name), save_full_labels=True,
                         batch_size=batch_size, progress=progress)
    problems = validate_submission(folder.submission, root / test_file, size=options.out_size)
    if problems:
        raise SubmissionError(f"{folder.submission}: {problems[0]}")
    return folder


@dataclass
class Predicted:
    """What `predict_and_score` made: the validation folder and its scores, the test folder
    (its submission checked, its local score beside it when validation was scored)."""

    run: Run
    val: PredictionFolder | None = None
    evaluation: Evaluation | None = None
    test: PredictionFolder | None = None
    score_file: Path | None = None
    decided: Path | None = None  # the submission with decisions.json applied (`decisions`)

    @property
    def submission(self) -> Path | None:
        return self.test.submission if self.test else None


def predict_and_score(run: str | os.PathLike | Run, options: PredictOptions = PredictOptions(),
                      splits=("val", "test"), *, val_file=None, test_file: str = "test.json",
                      data_root=None, name: str = "", batch_size: int = 4,
                      progress: bool = False, decisions=None) -> Predicted:
    """05_predict and `segkit predict` in one call: the validation split predicted and scored,
    the test split predicted into a checked submission, and the validation mIoU written beside
    it as its local score (`<submission>.score.json`, read by `segkit lb` and 08).

    A full-data run (fold=all) without a holdout has no validation split: test only.
    `decisions` (a decisions.json of one member, e.g. `segkit decide` on the run's recipe):
    the test probabilities with its class biases and small-region removal, written to
    outputs/predictions/<name or run>/decided.csv with the decisions' OOF mIoU beside it,
    naming the decisions file.

    Example:
        done = predict_and_score("efficientnet_lite0_fold0", PredictOptions(flips=["h"]))
        done.evaluation.miou, done.submission
    """
    from segkit.submission.leaderboard import write_local_score

    unknown = [s for s in splits if s not in ("val", "test")]
    if unknown or not splits:
        raise SegkitError(f"splits={list(splits)}; allowed: val, test (one or both)")
    done = Predicted(Run.open(run))
    common = dict(data_root=data_root, name=name, batch_size=batch_size, progress=progress)
    if "val" in splits and not val_file and done.run.data()[1] is None:
        print(f"{done.run.name}: a full-data run (fold=all) without a holdout_file: no "
              "validation split; test only")
    elif "val" in splits:
        done.val, done.evaluation = predict_validation(done.run, options, val_file=val_file,
                                                       **common)
    if "test" in splits:
        done.test = predict_test(done.run, options, test_file=test_file, **common)
        if done.evaluation is not None:
            done.score_file = write_local_score(done.test.submission, done.evaluation.miou,
                                                "validation mIoU (full size)")
        if decisions:
            done.decided = _decided(done, decisions, test_file, data_root, name)
    return done


def _decided(done: Predicted, decisions, test_file: str, data_root, name: str) -> Path:
    from segkit.predict.decision_record import decided_submission, load_decisions
    from segkit.submission.leaderboard import write_local_score

    decided = load_decisions(decisions)
    if len(decided.members) != 1:
        raise SegkitError(f"{decided.path}: decided for an ensemble of {decided.members}; a "
                          "single run takes decisions of one member (`segkit decide` on its "
                          "recipe's fold runs), an ensemble's go to 07_ensemble")
    root = Path(data_root) if data_root else done.run.data_root
    out = outputs_dir() / "predictions" / (name or done.run.name) / "decided.csv"
    decided_submission(decided, [done.test], None, out, test_json=root / test_file)
    write_local_score(out, decided.miou_after, "OOF mIoU of the recipe with the decisions",
                      decisions=decided.path)
    return out


def val_predictions(run: str | os.PathLike | Run, checkpoint: str = "best") -> Path:
    """The run's validation prediction folder with full-size labels (outputs/predictions/
    <run>/val, as 05 writes it with its defaults), predicting it first if it is missing."""
    return predict_run(run, "val", PredictOptions(checkpoint=checkpoint, flips=("h",)),
                       save_full_labels=True).path
