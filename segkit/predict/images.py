"""Predicting a folder of images without annotations (`segkit predict RUN --images DIR`,
05_predict's `images_dir`): every JPEG and PNG under it, into a prediction folder like any other
(probabilities, full-size label maps, meta.json with each id's file name, and a submission CSV
when asked), from a COCO-style image list written under outputs/image_lists/ (never into the
images folder; segkit.coco.folders).

Example:
    folder = predict_images("efficientnet_lite0_fold0", "photos/", submission=True)
    folder.label(1)           # the first file's label map (ids follow the sorted file names)
"""

from __future__ import annotations

import os
from pathlib import Path

from segkit.core.errors import SegkitError
from segkit.core.paths import outputs_dir
from segkit.predict.options import PredictOptions
from segkit.results.predictions import PredictionFolder
from segkit.results.runs import Run


def images_prediction_dir(run: Run, images_dir: str | os.PathLike, name: str = "") -> Path:
    """outputs/predictions/<name or run name>/images_<folder name>."""
    return outputs_dir() / "predictions" / (name or run.name) / \
        f"images_{Path(images_dir).resolve().name}"


def _categories(run: Run, model) -> list[dict]:
    """The run's categories: its training file's, else the model's class names."""
    from segkit.coco.files import load_coco
    from segkit.predict.inference import model_classes

    try:
        return load_coco(run.fold_files()[0]).categories
    except SegkitError:
        names = model_classes(model)
        return [{"id": i, "name": n} for i, n in enumerate(names[1:], start=1)]


def predict_images(run: str | os.PathLike | Run, images_dir: str | os.PathLike,
                   options: PredictOptions = PredictOptions(), *, name: str = "",
                   submission: bool = False, out_dir: str | os.PathLike | None = None,
                   batch_size: int = 4, progress: bool = False) -> PredictionFolder:
    """Predict every JPEG / PNG under `images_dir` (subfolders too, sorted by path) with a run's
    `options.checkpoint`: probabilities at `options.out_size`, full-size label maps
    (labels/<id>.png; meta.json maps ids to file names), and with `submission` a submission
    CSV (file names relative to the folder, label maps at `options.out_size`). Predicted
    afresh each time (the folder's files may have changed); the folder is complete or absent.
    Default folder: `images_prediction_dir`.
    """
    from segkit.coco.files import load_coco
    from segkit.coco.folders import image_folder_coco
    from segkit.core.classes import ClassTable
    from segkit.predict.inference import check_model_classes, load_model
    from segkit.predict.writing import predict_dataset

    run = Run.open(run)
    images_dir = Path(images_dir)
    model = load_model(run, options.checkpoint)
    coco_file = image_folder_coco(images_dir, _categories(run, model),
                                  outputs_dir() / "image_lists")
    coco = load_coco(coco_file)
    check_model_classes(model, ClassTable.for_coco(coco.categories).names, str(coco.path))
    out = Path(out_dir) if out_dir else images_prediction_dir(run, images_dir, name)
    predict_dataset(model, coco, images_dir, out, options, split="images",
                    batch_size=batch_size, save_full_labels=True, progress=progress,
                    submission=submission)
    return PredictionFolder(out)
