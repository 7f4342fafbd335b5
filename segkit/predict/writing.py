"""Prediction folders: what 05_predict writes and 06 / 07 / 08 read, and how they are made.

A prediction folder (`outputs/predictions/<run>/<split>/`) holds:
    meta.json            classes, size, split, the COCO image entries in order, and everything
                         that made these predictions (checkpoint, source file, TTA, slide,
                         out_size, reduction, amp): a folder is reused only when all of it
                         matches what is asked
    probs/<image_id>.npy uint8 (C, H, W): class probabilities quantised as round(p * 255)
    labels/<image_id>.png full-size label maps (when asked: scoring at the annotated size)
    submission.csv       for the test split

Example:
    >>> val = predict_run("efficientnet_lite0_fold0", "val", flips=("h",))   # doctest: +SKIP
    >>> evaluate(val, load_coco(Run.open("efficientnet_lite0_fold0").data()[1])).miou  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.checks import check_choice
from segkit.errors import ParameterError, SegkitError
from segkit.paths import atomic_path, outputs_dir, read_json_file, write_text_atomic
from segkit.runs import Run
from segkit.submission import SUBMISSION_SIZE
from segkit.vote import check_weights

REDUCTIONS = ("probs", "nearest", "max2x2")


def prediction_identity(checkpoint, source, split: str, *, out_size=SUBMISSION_SIZE,
                        reduction: str = "probs", flips=(), scales=(1.0,), slide=None,
                        amp: bool = False) -> dict:
    """What makes a prediction folder's contents: recorded in its meta.json, compared before
    a folder is reused (paths by what they point at)."""
    return dict(checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
                source=str(Path(source).resolve()), split=split,
                out_size=[int(v) for v in out_size], reduction=reduction,
                flips=list(flips), scales=[float(s) for s in scales],
                slide=[int(v) for v in slide] if slide else None, amp=bool(amp))


def predict_dataset(model, coco, data_root, out_dir, *, split: str = "test",
                    out_size: tuple[int, int] = SUBMISSION_SIZE, reduction: str = "probs",
                    flips: tuple[str, ...] = (), scales: tuple[float, ...] = (1.0,),
                    slide: tuple[int, int] | None = None, amp: bool = False,
                    batch_size: int = 4, save_full_labels: bool = False,
                    progress: bool = True) -> Path:
    """Predict every image of a COCO file into a prediction folder (see the module docstring).

    Writes probs at `out_size` for each image, `labels/<id>.png` (full size) when asked, the
    submission-size label maps' CSV for the test split, and meta.json last, so a folder with a
    meta.json is complete.
    """
    from tqdm import tqdm

    from segkit.coco import read_image, write_png
    from segkit.inference import model_classes, predict_probs, reduce_label, resize_probs

    check_choice("reduction", reduction, REDUCTIONS)
    classes = model_classes(model)
    out_dir = Path(out_dir)
    (out_dir / "probs").mkdir(parents=True, exist_ok=True)
    for img in coco.images:  # fail before predicting anything if an image is missing
        if not (Path(data_root) / img["file_name"]).exists():
            raise SegkitError(f"{Path(data_root) / img['file_name']}: image file missing "
                              f"(image id {img['id']} of {coco.path})")
    need_full = save_full_labels or reduction != "probs"
    small_labels = {}
    batches, current = [], []
    for img in coco.images:
        if current and (len(current) == batch_size or
                        (current[0]["height"], current[0]["width"]) != (img["height"], img["width"])):
            batches.append(current)
            current = []
        current.append(img)
    if current:
        batches.append(current)
    bar = tqdm(total=len(coco.images), desc=f"predict {split}", disable=not progress)
    for batch in batches:
        images = [read_image(data_root, img) for img in batch]
        full = predict_probs(model, images, None if need_full else out_size, flips, scales,
                             slide, amp)
        for img, p in zip(batch, full):
            small = p
            if need_full:
                label = p.argmax(0).astype(np.uint8)
                if save_full_labels:
                    write_png(out_dir / "labels" / f"{img['id']}.png", label)
                small = resize_probs(p, out_size)
            save_probs(out_dir, img["id"], small)
            small_labels[img["id"]] = (small.argmax(0).astype(np.uint8) if reduction == "probs"
                                       else reduce_label(label, out_size, reduction))
        bar.update(len(batch))
    bar.close()
    if split == "test":
        from segkit.submission import write_submission

        write_submission(out_dir / "submission.csv", [img["file_name"] for img in coco.images],
                         (small_labels[img["id"]] for img in coco.images),
                         num_classes=len(classes), size=tuple(out_size))
    identity = prediction_identity(getattr(model, "segkit_checkpoint", None), coco.path, split,
                                   out_size=out_size, reduction=reduction, flips=flips,
                                   scales=scales, slide=slide, amp=amp)
    write_prediction_meta(out_dir, coco.images, classes, out_size, **identity)
    return out_dir


def predict_run(run: str | os.PathLike | Run, split: str, coco_file=None, data_root=None,
                out_dir: str | os.PathLike | None = None, checkpoint: str = "best",
                progress: bool = False, save_full_labels: bool = False, batch_size: int = 4,
                **options) -> PredictionFolder:
    """The prediction folder of a run's checkpoint on a COCO file, predicted unless a complete
    folder made the same way (`prediction_identity`: checkpoint, file, TTA, slide, out_size,
    reduction, amp) is already there.

    coco_file: default the run's validation file for split "val", else `data_root`/test.json;
    data_root: default the run's. Default folder: outputs/predictions/<run name>/<split>.
    `options` go to `predict_dataset` (out_size, reduction, flips, scales, slide, amp).

    Example:
        >>> predict_run("efficientnet_lite0_fold0", "test", flips=("h",))       # doctest: +SKIP
    """
    from segkit.classes import ClassTable
    from segkit.coco import load_coco
    from segkit.inference import check_model_classes, load_model

    run = Run.open(run)
    root, val_file = run.data()
    root = Path(data_root) if data_root else root
    coco = load_coco(coco_file or (val_file if split == "val" else root / "test.json"))
    ckpt = run.checkpoint(checkpoint)
    out_dir = Path(out_dir) if out_dir else outputs_dir() / "predictions" / run.name / split
    wanted = prediction_identity(ckpt, coco.path, split, **options)
    if (out_dir / "meta.json").exists():
        try:
            meta = read_prediction_meta(out_dir)
        except SegkitError:
            meta = {}
        labels_ok = not save_full_labels or (out_dir / "labels").is_dir()
        if labels_ok and all(meta.get(k) == v for k, v in wanted.items()):
            return PredictionFolder(out_dir)
    model = load_model(run, checkpoint)
    check_model_classes(model, ClassTable.for_coco(coco.categories).names, str(coco.path))
    predict_dataset(model, coco, root, out_dir, split=split, progress=progress,
                    save_full_labels=save_full_labels, batch_size=batch_size, **options)
    return PredictionFolder(out_dir)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def predict_validation(run: str | os.PathLike | Run, checkpoint: str = "best", val_file=None,
                       data_root=None, name: str = "", **options
                       ) -> tuple[PredictionFolder, Evaluation]:
    """05_predict's validation half: predict the run's validation file (or `val_file`) with
    full-size labels and score it at the annotated size."""
    from segkit.coco import load_coco

    run = Run.open(run)
    coco = load_coco(val_file or run.data()[1])
    out_dir = outputs_dir() / "predictions" / (name or run.name) / "val"
    folder = predict_run(run, "val", coco.path, data_root, out_dir, checkpoint,
                         save_full_labels=True, **options)
    return folder, evaluate(folder.path, coco)


def predict_test(run: str | os.PathLike | Run, checkpoint: str = "best",
                 test_file: str = "test.json", data_root=None, name: str = "", **options
                 ) -> PredictionFolder:
    """05_predict's test half: predict `data_root`/`test_file` and write the submission CSV,
    checked against the test file (a SubmissionError names the first problem)."""
    from segkit.errors import SubmissionError
    from segkit.submission import validate_submission

    run = Run.open(run)
    root = Path(data_root) if data_root else run.data_root
    out_dir = outputs_dir() / "predictions" / (name or run.name) / "test"
    folder = predict_run(run, "test", root / test_file, root, out_dir, checkpoint,
                         save_full_labels=True, **options)
    problems = validate_submission(folder.submission, root / test_file,
                                   size=tuple(options.get("out_size", SUBMISSION_SIZE)))
    if problems:
        raise SubmissionError(f"{folder.submission}: {problems[0]}")
    return folder


def val_predictions(run: str | os.PathLike | Run, checkpoint: str = "best") -> Path:
    """The run's validation prediction folder with full-size labels (outputs/predictions/
    <run>/val, as 05 writes it with its defaults), predicting it first if it is missing."""
    from segkit.predict import predict_run

    return predict_run(run, "val", checkpoint=checkpoint, save_full_labels=True,
                       flips=("h",)).path
