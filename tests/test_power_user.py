"""The paths an mmseg power user walks: mmseg imported before segkit, `mmseg::` bases, whole-mode
runs recorded as they trained, runs of other class tables in 08, warm-ups longer than the run,
the learning-rate curve, and a pseudo-label threshold that keeps nothing."""

import json
import logging
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from segkit.core.classes import TRASH
from segkit.core.errors import ParameterError
from segkit.core.paths import outputs_dir
from segkit.recipe.parameters import check_training_parameters
from segkit.recipe.schedules import schedulers
from segkit.results.report import by_class_table, curves, runs_table
from segkit.results.runs import Run
from segkit.train import compat
from segkit.train.training import build_config, run
from tests.conftest import notebook_text, run_notebook, tiny_train_params


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


# --- mmseg imported first; the Line NMS note ---------------------------------------------------

def test_mask2former_builds_when_mmseg_was_imported_before_segkit():
    """A notebook that imports mmseg (or mmseg.apis) first: mmseg's Mask2Former head caught the
    failed mmdet import ("Please install onedl-mmdetection") before segkit's stand-in."""
    done = _python("""
        from mmseg.apis import init_model  # before segkit: no mmcv._ext stand-in yet
        from mmseg.models.decode_heads import mask2former_head
        from mmengine.model import BaseModule
        print("placeholder before:", mask2former_head.MMDET_Mask2FormerHead is BaseModule)
        import torch
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS
        from segkit.train.models import model_config
        cfg, _ = model_config("mask2former_swin_t", num_classes=5, weights="none")
        init_default_scope("mmseg")
        model = MODELS.build(cfg).eval()
        with torch.no_grad():
            out = model.inference(torch.randn(1, 3, 64, 64), [dict(img_shape=(64, 64),
                                  ori_shape=(64, 64), pad_shape=(64, 64))])
        print("scores", tuple(out.shape))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    if compat.mmcv_has_compiled_ops():
        pytest.skip("compiled mmcv ops: mmdet imports without the stand-in anyway")
    assert "placeholder before: True" in done.stdout  # the situation the repair is for
    assert "scores (1, 5, 64, 64)" in done.stdout


def test_loading_a_model_prints_no_line_nms_note(trained_run):
    done = _python(f"""
        from segkit.predict.inference import load_model
        model = load_model({str(trained_run.work_dir)!r})
        import mmdet.models  # every mmdet head, CLRNet's lane head among them
        print("loaded", type(model.backbone).__name__)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded EfficientNetLite0" in done.stdout
    assert "Line NMS" not in done.stdout + done.stderr


def test_line_nms_note_is_dropped_while_mmdet_imports():
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        with compat._without_line_nms_note():
            logger.warning("Line NMS is not compiled. Most likely when installing the package")
            logger.warning("another warning")
        logger.warning("Line NMS is not compiled (outside the import)")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another warning", "Line NMS is not compiled (outside the import)"]


# --- mmseg:: bases ------------------------------------------------------------------------------

def test_mmseg_scope_resolves_to_the_installed_fork():
    from mmengine.config import utils as config_utils

    compat.apply()
    assert config_utils.MODULE2PACKAGE["mmseg"] == "mmseg"  # onedl-mmsegmentation is the dist
    assert compat.resolve_config_scopes() == {}  # idempotent


USER_CONFIG = """
_base_ = ['mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py']
crop_size = (64, 64)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor, decode_head=dict(channels=32))
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                  dict(type='RandomResize', scale=(96, 96), ratio_range=(1.0, 1.5),
                       keep_ratio=True),
                  dict(type='RandomCrop', crop_size=crop_size), dict(type='PackSegInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(96, 96),
                                                      keep_ratio=True),
                 dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=0.0003))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1),
                   dict(type='PolyLR', power=1.0, begin=1, end=2, eta_min=0.0, by_epoch=False)]
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1))
"""


def test_a_users_mmseg_base_config_trains_two_iterations(sample_root, tmp_path):
    path = tmp_path / "my_segformer.py"
    path.write_text(USER_CONFIG)
    result = run(**tiny_train_params(sample_root, model=str(path), weights="none", iters=2,
                                     val_interval=2, warmup_iters=0, num_workers=0,
                                     work_dir=str(tmp_path / "segkit_mode")))
    assert result.last_checkpoint.name == "iter_2.pth" and 0 <= result.best_miou <= 1
    assert "MixVisionTransformer" in (result.work_dir / "config.py").read_text()


def test_a_whole_mode_run_records_what_it_trained(sample_root, tmp_path, trained_run):
    """config_mode=whole trains the file's 2 iterations at its 64 crop and batch 2: params.json
    holds segkit's defaults, summary.json and 08's table what really trained."""
    path = tmp_path / "my_segformer.py"
    path.write_text(USER_CONFIG)
    params = tiny_train_params(sample_root, model=str(path), weights="none",
                               config_mode="whole", work_dir=str(tmp_path / "whole_run"),
                               image_size=64, crop_size=512)  # ignored, so not refused
    params.pop("warmup_iters")
    with pytest.warns(UserWarning, match=r"as written and ignores \[.*'crop_size'"):
        result = run(**params)
    assert result.last_checkpoint.name == "iter_2.pth"
    trained = Run(result.work_dir).trained
    assert trained == {"iters": 2, "image_size": [96, 96], "crop_size": [64, 64],
                       "batch_size": 2, "optimizer": "AdamW", "lr": 0.0003,
                       "schedule": "LinearLR 0-1 + PolyLR 1-2"}
    recorded = json.loads((result.work_dir / "params.json").read_text())
    assert recorded["iters"] == 300 and recorded["crop_size"] == 512  # segkit's, not trained
    table = runs_table([result.work_dir, trained_run.work_dir]).set_index("run")
    whole = table.loc["whole_run"]
    assert (whole["iters"], whole["image_size"], whole["crop_size"], whole["batch_size"],
            whole["optimizer"], whole["lr"]) == (2, 96, 64, 2, "AdamW", 0.0003)
    assert whole["schedule"] == "LinearLR 0-1 + PolyLR 1-2"
    segkit_mode = table.loc[trained_run.work_dir.name]  # segkit's parameters, as it trained
    assert (segkit_mode["iters"], segkit_mode["crop_size"], segkit_mode["schedule"]) == \
        (150, 64, "poly")
    assert Run(trained_run.work_dir).trained["schedule"] == "LinearLR 0-10 + PolyLR 10-150"


def test_whole_mode_allows_a_crop_larger_than_the_image_size():
    base = dict(fold=0, image_size=128, crop_size=512)
    assert check_training_parameters({**base, "config_mode": "whole"})["crop_size"] == 512
    with pytest.raises(ParameterError, match="crop_size 512 is larger than image_size 128"):
        check_training_parameters(base)


# --- warm-ups longer than the run ---------------------------------------------------------------

def test_a_warmup_longer_than_the_run_is_named_with_numbers(sample_root):
    with pytest.warns(UserWarning, match=r"warmup_iters=50 is not shorter than the run's 5 "
                                         r"iterations: the warm-up is cut to 4.*here 1\)"):
        cfg = build_config(**tiny_train_params(sample_root, epochs=1, warmup_iters=50))
    assert cfg["train_cfg"]["max_iters"] == 5  # 1 epoch: 18 images at batch 4
    assert cfg["param_scheduler"][0]["end"] == 4
    with pytest.warns(UserWarning, match=r"warmup_iters=40 takes 67% of the run's 60 "
                                         r"iterations.*here 6\)"):
        schedulers("poly", 0.01, 60, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schedulers("poly", 0.01, 300, 50)  # the defaults: quiet
        schedulers("onecycle", 0.01, 300, 150)


# --- learning-rate curves -----------------------------------------------------------------------

def test_lr_is_plotted_beside_the_loss(trained_run):
    import matplotlib

    matplotlib.use("Agg")
    from segkit import viz

    scalars = Run(trained_run.work_dir).scalars()
    fig = viz.plot_training(scalars, val_columns=["mIoU", "aAcc"])
    loss, lr, val = fig.axes
    assert [a.get_title() for a in fig.axes] == ["training loss", "learning rate",
                                                 "validation"]
    steps, values = lr.lines[0].get_data()
    assert len(values) == (scalars["kind"] == "train").sum()
    assert values[-1] < values[0] / 10 and len(val.lines) == 2  # poly decays to near 0
    warmup = pd.DataFrame({"step": [1, 50, 100], "kind": "train", "loss": 1.0,
                           "lr": [2e-6, 2e-3, 1e-3]})  # a warm-up from lr / 1000: log scale
    assert viz.plot_training(warmup).axes[1].get_yscale() == "log"
    long = curves([trained_run.work_dir, trained_run.work_dir])
    assert "lr" in long.columns
    assert len(viz.plot_training(long).axes[1].lines) == 1  # one run (named twice): one line
    empty = viz.plot_training(pd.DataFrame({"step": [1], "kind": ["train"], "loss": [1.0]}))
    assert "no lr logged" in [t.get_text() for t in empty.axes[1].texts]
    matplotlib.pyplot.close("all")


# --- runs of other class tables in 08 ----------------------------------------------------------

def _scores_only_run(folder, names, miou):
    """A run folder with logged scores only (params, scalars, summary)."""
    (folder / "20260101_000000" / "vis_data").mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"model": "efficientnet_lite0", "iters": 20}))
    rows = [{"loss": 1.0, "lr": 0.001, "step": 10},
            {"mIoU": miou, "aAcc": 0.95, **{f"IoU.{n}": miou for n in names}, "step": 20}]
    (folder / "20260101_000000" / "vis_data" / "scalars.json").write_text(
        "\n".join(json.dumps(r) for r in rows))
    (folder / "summary.json").write_text(json.dumps({"seconds": 60.0}))
    return folder


def _three_class_run(tmp_path, miou=0.9):
    """A run of another class table (3 classes) scoring higher than the 11-class runs, and a
    second 11-class run: the trash runs are the main group."""
    _scores_only_run(tmp_path / "lite0_again", TRASH.names, 0.01)
    return _scores_only_run(tmp_path / "three_classes", ["Background", "Cat", "Dog"], miou)


def test_runs_of_another_class_table_are_compared_apart(trained_run, tmp_path):
    other = _three_class_run(tmp_path)
    table = runs_table([other, trained_run.work_dir, tmp_path / "lite0_again"])
    # the best 3-class run is not "the best run": it comes after the 11-class ones
    assert table["run"].tolist() == [trained_run.work_dir.name, "lite0_again", "three_classes"]
    assert table["classes"].tolist() == ["11: Background ... Clothing"] * 2 + [
        "3: Background ... Dog"]
    main, second = by_class_table(table)
    assert main["run"].tolist() == [trained_run.work_dir.name, "lite0_again"]
    assert "IoU Cat" not in main.columns and "IoU Clothing" in main.columns
    assert second["run"].tolist() == ["three_classes"]
    assert [c for c in second.columns if c.startswith("IoU ")] == ["IoU Background", "IoU Cat",
                                                                   "IoU Dog"]


@pytest.mark.slow  # a notebook run; runs_table and by_class_table are tested above
def test_08_report_keeps_another_class_table_apart(trained_run, tmp_path):
    other = _three_class_run(tmp_path)
    nb = run_notebook("08_report", tmp_path, runs=[str(other), str(trained_run.work_dir),
                                                   str(tmp_path / "lite0_again")], n_worst=1)
    text = notebook_text(nb)
    assert "another class table (3: Background ... Dog): 1 runs, compared separately" in text
    assert f"{trained_run.work_dir.name}: validation mIoU" in text  # the error analysis


# --- a threshold that keeps no pixel -------------------------------------------------------------

def test_a_threshold_that_keeps_nothing_stops_round_2(trained_run, tmp_path):
    from segkit.coco.files import write_coco
    from segkit.flow.round2 import train_round2
    from segkit.predict.pseudo import check_pseudo_kept, pseudo_labels
    from segkit.results.predictions import save_probs, write_prediction_meta

    images = [{"id": 1, "file_name": "1.jpg", "width": 16, "height": 12}]
    categories = [{"id": i, "name": n} for i, n in enumerate(TRASH.names) if i]
    test_json = write_coco({"images": images, "annotations": [], "categories": categories},
                           tmp_path / "test.json")
    probs = np.full((11, 12, 16), 5, np.uint8)
    probs[3] = 205  # every pixel: class 3 at 205/255 = 0.804
    save_probs(tmp_path / "pred", 1, probs)
    write_prediction_meta(tmp_path / "pred", images, TRASH.names, (12, 16), "test")
    result = pseudo_labels(tmp_path / "pred", tmp_path / "pseudo_none", threshold=0.9,
                           test_json=test_json, data_root=tmp_path)
    assert result.overall_kept == 0.0
    with pytest.raises(ParameterError, match=r"threshold 0.9 kept 0.0% of the 192 test pixels "
                                             r"\(the most confident pixel reached 0.804.*"
                                             r"lower the threshold"):
        check_pseudo_kept([result.coco_path])
    with pytest.raises(ParameterError, match="kept 0.0%"):
        train_round2(trained_run.work_dir, [result.coco_path], "never_trained", iters=2)
    assert not (outputs_dir() / "runs" / "never_trained").exists()
    some = pseudo_labels(tmp_path / "pred", tmp_path / "pseudo_some", threshold=0.8,
                         test_json=test_json, data_root=tmp_path)
    assert some.overall_kept == 1.0
    check_pseudo_kept([some.coco_path])  # passes


# --- Mask2Former probabilities -------------------------------------------------------------------

def test_mask_head_scores_become_probabilities_even_when_tiny():
    from segkit.predict.inference import _to_probs

    class Mask2FormerHead(torch.nn.Module):
        pass

    class Model:
        decode_head = Mask2FormerHead()

    scores = torch.full((1, 4, 2, 2), 1e-10)
    scores[0, 2] = 3e-10
    scores[..., 1, 1] = 0.0  # every class scored 0: uniform
    probs = _to_probs(Model(), scores)
    assert torch.allclose(probs.sum(1), torch.ones(1, 2, 2))
    assert probs[0, :, 0, 0].tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 2, 1 / 6])
    assert probs[0, :, 1, 1].tolist() == pytest.approx([0.25] * 4)
    assert np.isfinite(probs.numpy()).all() and len(TRASH) == 11
