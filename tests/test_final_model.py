"""Final models (fold=all): every training image, no validation or a holdout, iterations from
the recipe's CV runs, predicted test-only by 05."""

import json

import pytest

from segkit.coco.files import load_coco
from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import outputs_dir
from segkit.folds.full_data import full_data_files
from segkit.folds.split import split_file
from segkit.recipe.final import final_iterations
from segkit.recipe.parameters import check_training_parameters
from segkit.results.runs import Run
from tests.conftest import TINY_TRAIN


@pytest.fixture(scope="module")
def full_run(sample_root, tmp_path_factory):
    """A full-data run of 10 iterations on the tiny sample."""
    from segkit.train.training import run

    return run(data_root=str(sample_root), fold="all", iters=10, val_interval=5,
               work_dir=str(tmp_path_factory.mktemp("runs") / "lite0_foldall"), **TINY_TRAIN)


def _dataset_of(config):
    """The training dataset a run's saved config builds."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import segkit.train  # noqa: F401

    init_default_scope("mmseg")
    return DATASETS.build(Config.fromfile(str(config)).train_dataloader.dataset)


def test_fold_all_trains_on_every_image_of_train_all(full_run, sample_root):
    run = Run(full_run.work_dir)
    config = (run.path / "config.py").read_text()
    dataset = _dataset_of(run.path / "config.py")
    every = load_coco(sample_root / "train_all.json").images
    assert len(dataset) == len(every) == 24
    assert sorted(dataset.get_data_info(i)["img_path"] for i in range(len(dataset))) == \
        sorted(str(sample_root / img["file_name"]) for img in every)
    assert str(sample_root / "train_all.json") in config
    assert "val_cfg = None" in config and "val_dataloader = None" in config
    assert run.full_data and run.data()[1] is None
    assert run.best_checkpoint is None and sorted(run.checkpoints()) == [10]
    assert (run.scalars()["kind"] == "train").all()  # never validated
    assert run.name == "lite0_foldall"


def test_a_holdout_is_validated_on_and_left_out_of_training(sample_root, tmp_path):
    from segkit.train.training import build_config

    split_file(sample_root / "train_all.json", tmp_path / "splits", n_splits=3)
    holdout = tmp_path / "splits" / "fold2_val.json"
    cfg = build_config(data_root=str(sample_root), fold="all", holdout_file=str(holdout),
                       **TINY_TRAIN)
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import segkit.train  # noqa: F401

    init_default_scope("mmseg")
    train = DATASETS.build(cfg["train_dataloader"]["dataset"])
    held = {str(sample_root / img["file_name"]) for img in load_coco(holdout).images}
    assert len(train) == 24 - len(held)
    assert not held & {train.get_data_info(i)["img_path"] for i in range(len(train))}
    assert cfg["val_dataloader"]["dataset"]["sources"] == [
        {"ann_file": str(holdout), "data_root": str(sample_root)}]
    assert cfg["default_hooks"]["checkpoint"]["save_best"] == "mIoU"


def test_full_data_files_without_train_all_take_the_union_of_the_folds(sample_root, tmp_path):
    split_file(sample_root / "train_all.json", tmp_path / "splits", n_splits=3)
    files = full_data_files(tmp_path, tmp_path / "splits")  # no train_all.json in tmp_path
    assert [f.name for f in files] == ["fold0_train.json", "fold0_val.json"]
    ids = [img["id"] for f in files for img in load_coco(f).images]
    assert sorted(ids) == sorted(img["id"] for img in
                                 load_coco(sample_root / "train_all.json").images)
    assert full_data_files(sample_root, None) == [sample_root / "train_all.json"]
    with pytest.raises(ParameterError, match="no train_all.json"):
        full_data_files(tmp_path, tmp_path / "nothing")


def test_full_data_parameters_are_checked():
    assert check_training_parameters({"fold": "all"})["fold"] == "all"
    assert check_training_parameters({"fold": "2"})["fold"] == 2  # papermill / CLI text
    for bad, message in (({"fold": "every"}, "fold='every': expected a fold index"),
                         ({"fold": True}, "fold=True"),
                         ({"holdout_file": "h.json"}, "is for full-data runs"),
                         ({"fold": 1, "iters_from": ["a"]}, "is for full-data runs"),
                         ({"fold": "all", "iters_from": ["a"], "epochs": 3},
                          "iters_from or epochs")):
        with pytest.raises(ParameterError, match=message):
            check_training_parameters(bad)


def _cv_run(name, split, fold, best):
    folder = outputs_dir() / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    params = check_training_parameters({"fold": fold, "splits_dir": str(split)})
    (folder / "params.json").write_text(json.dumps(params, default=str))
    (folder / f"best_mIoU_iter_{best}.pth").write_bytes(b"")
    return folder


def test_final_iterations_scale_the_best_iteration_to_every_image(sample_root, tmp_path):
    split = tmp_path / "splits"
    split_file(sample_root / "train_all.json", split, n_splits=3)
    runs = [_cv_run(f"fi_fold{k}", split, k, best) for k, best in enumerate((30, 60, 90))]
    n_train = [len(load_coco(split / f"fold{k}_train.json").images) for k in range(3)]
    final = final_iterations(runs, 24)
    expected = round(60 * 24 / (sum(n_train) / 3))
    assert final.iters == expected and final.n_all == 24
    assert [row[1:] for row in final.per_fold] == list(zip((30, 60, 90), n_train))
    assert final.rule.startswith("final iterations = mean best iteration x n_all / mean "
                                 "n_train, over 3 folds = mean(30, 60, 90) x 24 / mean(")
    assert final.rule.endswith(f" = {expected}")
    # a training run with iters_from trains that long, and says why
    from segkit.train.training import build_config
    from segkit.train.training_data import full_data_iterations

    params = dict(data_root=str(sample_root), fold="all", iters_from=[str(r) for r in runs],
                  **TINY_TRAIN)
    assert build_config(**params)["train_cfg"]["max_iters"] == expected
    assert full_data_iterations(check_training_parameters(params)).rule == final.rule
    with pytest.raises(SegkitError, match="no best checkpoint and no validation"):
        (runs[0] / "best_mIoU_iter_30.pth").unlink()
        final_iterations(runs, 24)


def test_05_predicts_a_full_data_run_test_only(full_run, sample_root, capsys):
    from segkit.predict.options import PredictOptions
    from segkit.predict.writing import predict_and_score

    done = predict_and_score(full_run.work_dir, PredictOptions(), name="full_t")
    assert done.val is None and done.evaluation is None and done.score_file is None
    assert done.submission.exists()
    assert "no validation split; test only" in capsys.readouterr().out
    with pytest.raises(SegkitError, match="no validation file to compare runs on"):
        from segkit.results.run_lists import common_validation

        common_validation([full_run.work_dir])
