"""A prediction folder as a FiftyOne dataset (the optional `fiftyone` extra: skipped without
it, or where its MongoDB cannot start)."""

from __future__ import annotations

import numpy as np
import pytest

from segkit.coco.files import cached_label_maps, load_coco, read_label
from segkit.core.classes import ClassTable
from segkit.results.predictions import quantize_probs, save_probs, write_prediction_meta


@pytest.fixture
def fo(tmp_path, monkeypatch):
    fiftyone_missing = "FiftyOne is not installed (the optional fiftyone extra)"
    try:
        import fiftyone.constants  # noqa: F401 - the package, without starting its database
    except ImportError:
        pytest.skip(fiftyone_missing)
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(tmp_path / "fiftyone_db"))
    monkeypatch.setenv("FIFTYONE_DO_NOT_TRACK", "true")
    monkeypatch.setenv("FIFTYONE_DATABASE_VALIDATION", "false")
    import fiftyone

    try:
        fiftyone.list_datasets()
    except Exception as exc:  # noqa: BLE001 - no MongoDB binary: fiftyone-db without internet
        pytest.skip(f"FiftyOne's database does not start here: {exc}")
    return fiftyone


def _perfect_predictions(sample_root, out):
    """A prediction folder of the sample's validation images that is their ground truth."""
    coco = load_coco(sample_root / "val.json")
    classes = ClassTable.for_coco(coco.categories)
    truth = cached_label_maps(coco, classes)
    for img in coco.images:
        label = read_label(truth[img["id"]])
        known = np.where(label < classes.num_classes, label, 0)  # 255 (ignored): background
        probs = np.eye(classes.num_classes, dtype=np.float32)[known].transpose(2, 0, 1)
        save_probs(out, img["id"], quantize_probs(probs))
    write_prediction_meta(out, coco.images, list(classes.names), (96, 96), "val",
                          source=str(sample_root / "val.json"))
    return coco


def test_prediction_folder_as_a_fiftyone_dataset(fo, sample_root, tmp_path, capsys):
    from segkit.flow.cli import main
    from segkit.results.fiftyone_view import fiftyone_dataset

    out = tmp_path / "predictions" / "perfect" / "val"
    coco = _perfect_predictions(sample_root, out)
    dataset = fiftyone_dataset(out, sample_root, name="segkit-test")
    assert len(dataset) == len(coco.images)
    assert dataset.default_mask_targets[1] == "General trash"
    sample = dataset.first()
    assert sample.miou == pytest.approx(1.0)
    prediction = sample.predictions.get_mask()
    assert prediction.shape == (96, 96)
    assert (prediction == read_label(sample.ground_truth.mask_path)).all()
    assert sorted(dataset.values("miou")) == pytest.approx([1.0] * len(coco.images))
    assert main(["fiftyone", str(out), "--data-root", str(sample_root), "--name",
                 "segkit-cli"]) == 0
    assert (f"'segkit-cli': {len(coco.images)} images (predictions, ground_truth, miou)"
            in capsys.readouterr().out)
    assert main(["fiftyone", str(out), "--data-root", str(tmp_path)]) == 2
