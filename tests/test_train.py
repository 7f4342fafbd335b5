"""Real mmsegmentation training on the tiny sample, on the CPU."""

import json

import numpy as np
import pytest
import torch

import segkit.train.training as train_mod
from segkit.coco.files import load_coco
from segkit.core.classes import TRASH
from segkit.core.errors import ParameterError
from segkit.core.metrics import confusion_matrix, miou
from segkit.recipe.parameters import LOSSES
from segkit.results.runs import Run, read_scalars
from segkit.train import compat
from segkit.train.training import build_config, run
from tests.conftest import tiny_train_params


def _all_background_miou(sample_root):
    from segkit.coco.files import label_map

    coco = load_coco(sample_root / "val.json")
    cm = sum(confusion_matrix(np.zeros((96, 96), np.uint8), label_map(coco, img, TRASH), 11)
             for img in coco.images)
    return miou(cm)


def test_training_learns(trained_run, sample_root):
    baseline = _all_background_miou(sample_root)
    # measured: ~0.45-0.6 after 150 iterations; predicting background everywhere gives ~0.08
    assert trained_run.best_miou > baseline + 0.2, (trained_run.best_miou, baseline)
    assert trained_run.best_checkpoint.exists() and trained_run.last_checkpoint.exists()
    assert trained_run.last_checkpoint.name == "iter_150.pth"
    assert set(trained_run.per_class_iou.index) == set(TRASH.names)
    scalars = trained_run.scalars
    train_rows = scalars[scalars["kind"] == "train"]
    assert train_rows["loss"].iloc[-1] < train_rows["loss"].iloc[0]


def test_run_folder_records_everything(trained_run):
    work = trained_run.work_dir
    params = json.loads((work / "params.json").read_text())
    env = json.loads((work / "environment.json").read_text())
    assert params["iters"] == 150 and params["lr"] == 0.002
    assert env["versions"]["onedl-mmsegmentation"] == "1.4.2" and env["device"] == "cpu"
    config = (work / "config.py").read_text()
    assert "CocoSegDataset" in config and "seed=42" in config.replace(" ", "")
    assert list(work.glob("*/vis_data/events.out.tfevents.*")), "no TensorBoard scalars"


def test_refuses_to_overwrite_a_run(trained_run, sample_root):
    with pytest.raises(ParameterError, match="resume=True"):
        run(**tiny_train_params(sample_root, iters=150, work_dir=str(trained_run.work_dir)))


def test_backbone_lr_multiplier_lands_in_param_groups(sample_root):
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    cfg = build_config(**tiny_train_params(sample_root, lr=0.01, backbone_lr_mult=0.1,
                                           weights="none"))
    model = MODELS.build(cfg["model"])
    wrapper = build_optim_wrapper(model, cfg["optim_wrapper"])
    backbone = {id(p) for p in model.backbone.parameters()}
    lrs = {}
    for group in wrapper.optimizer.param_groups:
        for p in group["params"]:
            lrs[id(p)] = group["lr"]
    assert np.allclose([lrs[i] for i in backbone], 0.001)
    assert np.allclose([lrs[id(p)] for p in model.decode_head.parameters()], 0.01)


def test_param_groups_are_merged_without_changing_any_parameters_options(sample_root):
    from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    cfg = build_config(**tiny_train_params(sample_root, lr=0.01, backbone_lr_mult=0.1,
                                           weights="none"))
    model = MODELS.build(cfg["model"])
    merged = build_optim_wrapper(model, cfg["optim_wrapper"]).optimizer
    plain_cfg = {k: v for k, v in cfg["optim_wrapper"].items()
                 if k not in ("constructor", "paramwise_cfg")}
    paramwise = cfg["optim_wrapper"]["paramwise_cfg"]
    plain = DefaultOptimWrapperConstructor(plain_cfg, paramwise)(model).optimizer

    def options(optimizer):
        return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups
                for p in g["params"]}

    from torch.nn.modules.batchnorm import _BatchNorm

    in_norms = {id(p) for m in model.modules() if isinstance(m, _BatchNorm)
                for p in m.parameters()}
    assert in_norms and len(merged.param_groups) < len(plain.param_groups) / 10
    assert len(options(merged)) == len(list(model.parameters()))
    # the same lr everywhere; no weight decay on every norm layer, the backbone's included
    # (mmengine's own constructor stops at the first custom key, `backbone`)
    for pid, (lr, wd) in options(merged).items():
        assert lr == options(plain)[pid][0]
        assert wd == (0.0 if pid in in_norms else 0.01)
    backbone_norms = {id(p) for p in model.backbone.parameters()} & in_norms
    assert backbone_norms and all(options(plain)[i][1] == 0.01 for i in backbone_norms)


def test_balanced_class_weights_favour_rare_classes(sample_root):
    from segkit.coco.pixels import pixel_counts
    from segkit.train.losses import balanced_class_weights

    weights = np.array(balanced_class_weights(sample_root / "train.json", TRASH))
    pixels = pixel_counts(load_coco(sample_root / "train.json"), TRASH).sum()
    present = pixels.to_numpy() > 0
    assert weights.shape == (11,) and np.all(weights[~present] == 1.0)
    assert weights[pixels.idxmax() == pixels.index][0] == weights[present].min() < 1.0
    assert weights[present].max() > 1.0 and np.all((weights >= 0.2) & (weights <= 5.0))
    cfg = build_config(**tiny_train_params(sample_root, class_weights="balanced",
                                           weights="none"))
    assert cfg["model"]["decode_head"]["loss_decode"]["class_weight"] == list(weights)
    with pytest.raises(ParameterError, match="balanced"):
        build_config(**tiny_train_params(sample_root, class_weights="rare"))


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_one_step(loss, sample_root, tmp_path):
    weights = [1.0] * 10 + [2.0]
    result = run(**tiny_train_params(sample_root, iters=2, val_interval=2, loss=loss, log_interval=1,
                                     class_weights=weights if loss != "dice" else None,
                                     weights="none", work_dir=str(tmp_path / loss)))
    losses = result.scalars["loss"].dropna()
    assert len(losses) and np.isfinite(losses).all()


def test_bad_parameters(sample_root, tmp_path):
    with pytest.raises(ParameterError, match="loss='l2'; allowed: ce, focal"):
        build_config(**tiny_train_params(sample_root, loss="l2"))
    with pytest.raises(ParameterError, match="unknown model 'resnet9'"):
        build_config(**tiny_train_params(sample_root, model="resnet9"))
    with pytest.raises(ParameterError, match=f"no fold files .* in {tmp_path}"):
        build_config(data_root=str(sample_root), fold=7, splits_dir=str(tmp_path))
    with pytest.raises(ParameterError, match="class_weights has 3 values"):
        build_config(**tiny_train_params(sample_root, class_weights=[1, 2, 3]))


def test_load_from_starts_from_the_checkpoint(trained_run, sample_root, tmp_path):
    """A zero-learning-rate run from a checkpoint validates exactly like that checkpoint."""
    ckpt = trained_run.last_checkpoint
    result = run(**tiny_train_params(sample_root, iters=1, val_interval=1, lr=0.0,
                                     warmup_iters=0, load_from=str(ckpt), augment=(),
                                     work_dir=str(tmp_path / "from_ckpt")))
    last_val = trained_run.scalars[trained_run.scalars["kind"] == "val"].iloc[-1]
    # BN statistics move a little in the one training step (train mode), weights do not
    assert result.best_miou == pytest.approx(float(last_val["mIoU"]), abs=0.05)
    fresh = run(**tiny_train_params(sample_root, iters=1, val_interval=1, lr=0.0,
                                    warmup_iters=0, weights="none", augment=(),
                                    work_dir=str(tmp_path / "fresh")))
    assert result.best_miou > fresh.best_miou + 0.2


class _Killed(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted(sample_root, tmp_path, monkeypatch):
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    params = tiny_train_params(sample_root, iters=20, val_interval=10, deterministic=True,
                               weights="none")
    whole = run(**params, work_dir=str(tmp_path / "whole"))

    @HOOKS.register_module(force=True)
    class KillAfter10(Hook):  # runs after the checkpoint hook has saved iteration 10
        priority = "LOWEST"

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter + 1 == 10:
                raise _Killed()

    original = train_mod.build_config

    def with_kill(**kw):
        cfg = original(**kw)
        cfg["custom_hooks"] = cfg["custom_hooks"] + [dict(type="KillAfter10")]
        return cfg

    monkeypatch.setattr(train_mod, "build_config", with_kill)
    with pytest.raises(_Killed):
        run(**params, work_dir=str(tmp_path / "killed"))
    monkeypatch.setattr(train_mod, "build_config", original)
    resumed = run(resume=True, **params, work_dir=str(tmp_path / "killed"))

    assert resumed.last_checkpoint.name == whole.last_checkpoint.name == "iter_20.pth"
    a = torch.load(whole.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert resumed.best_miou == pytest.approx(whole.best_miou, abs=1e-6)
    assert read_scalars(resumed.work_dir)["step"].max() == 20
    # killed before iteration 10's validation: the resumed run validates it again first
    val = read_scalars(resumed.work_dir).query("kind == 'val'")
    assert list(val["step"]) == [10, 20]
    assert resumed.best_checkpoint.name == whole.best_checkpoint.name


def test_bf16_amp_trains_on_cpu(sample_root, tmp_path, monkeypatch):
    # whatever this CPU is: the bf16 path must train where bf16 is native
    monkeypatch.setattr(compat, "cpu_has_fast_bf16", lambda: True)
    result = run(**tiny_train_params(sample_root, iters=2, val_interval=2, amp=True, log_interval=1,
                                     weights="none", work_dir=str(tmp_path / "amp")))
    cfg = (result.work_dir / "config.py").read_text()
    assert "CPUBF16OptimWrapper" in cfg
    assert np.isfinite(result.scalars["loss"].dropna()).all()


def test_amp_falls_back_to_fp32_on_a_cpu_without_native_bf16(sample_root, monkeypatch):
    monkeypatch.setattr(compat, "cpu_has_fast_bf16", lambda: False)
    if torch.cuda.is_available():
        pytest.skip("on CUDA amp is fp16")
    with pytest.warns(UserWarning, match="no native bf16"):
        cfg = build_config(**tiny_train_params(sample_root, amp=True, weights="none"))
    assert cfg["optim_wrapper"]["type"] == "OptimWrapper"
    assert not compat.autocast("cpu", enabled=True)._enabled  # inference stays fp32 too


@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_weight_averaging_runs(averaging, sample_root, tmp_path):
    result = run(**tiny_train_params(sample_root, iters=4, val_interval=4, averaging=averaging,
                                     weights="none", work_dir=str(tmp_path / averaging)))
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert any(k.startswith("ema_") for k in state["state_dict"]) or "ema_state_dict" in state


def test_last_checkpoint_survives_a_moved_run_folder(tmp_path):

    (tmp_path / "iter_5.pth").write_bytes(b"")
    (tmp_path / "iter_10.pth").write_bytes(b"")
    # mmengine's marker holds the absolute path of the folder the run was trained in
    (tmp_path / "last_checkpoint").write_text("/gpu-server/runs/lite0/iter_5.pth")
    assert Run(tmp_path).last_checkpoint == tmp_path / "iter_5.pth"
    (tmp_path / "last_checkpoint").unlink()
    assert Run(tmp_path).last_checkpoint == tmp_path / "iter_10.pth"


def test_a_cut_checkpoint_is_skipped_on_resume_and_said(sample_root, tmp_path, capsys):
    """A checkpoint cut short (a full disk before checkpoints were written aside) is never
    resumed from, and resuming says what it does: here no other interval checkpoint is kept,
    so it says it trains from the start (never silently)."""
    work = tmp_path / "cut"
    params = tiny_train_params(sample_root, iters=4, val_interval=2, weights="none",
                               work_dir=str(work))
    run(**params)
    newest = work / "iter_4.pth"
    newest.write_bytes(newest.read_bytes()[:1000])
    result = run(resume=True, **{**params, "iters": 6})
    printed = capsys.readouterr().out
    assert "skipping iter_4.pth" in printed and "training from the start" in printed
    assert result.last_checkpoint.name == "iter_6.pth"
    capsys.readouterr()
    run(resume=True, **{**params, "iters": 8})
    assert "continuing from iter_6.pth" in capsys.readouterr().out
    assert read_scalars(work)["step"].max() == 8


def test_checkpoints_are_written_aside_and_renamed(sample_root, tmp_path, monkeypatch):
    """A write that fails (disk full) leaves no `iter_N.pth` behind, and no partial file."""
    import mmengine.runner.runner as runner_mod

    real_save = runner_mod.save_checkpoint

    def disk_full(checkpoint, filename, *args, **kwargs):
        if "iter_4" in str(filename):
            with open(filename, "wb") as f:
                f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(checkpoint, filename, *args, **kwargs)

    monkeypatch.setattr(runner_mod, "save_checkpoint", disk_full)
    work = tmp_path / "full"
    with pytest.raises(OSError, match="No space left"):
        run(**tiny_train_params(sample_root, iters=4, val_interval=2, weights="none",
                                work_dir=str(work)))
    assert (work / "iter_2.pth").exists() and not (work / "iter_4.pth").exists()
    assert not list(work.glob(".*partial*"))
    assert Run(work).resume_point() == (work / "iter_2.pth", [])


def test_every_image_is_checked_before_the_first_iteration(sample_root, tmp_path):
    import shutil

    from segkit.core.errors import CocoError

    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    coco = load_coco(data / "train.json")
    missing = data / coco.images[3]["file_name"]
    missing.unlink()
    work = tmp_path / "never"
    with pytest.raises(CocoError, match=str(missing.name)):
        run(**tiny_train_params(data, iters=2, val_interval=2, weights="none",
                                work_dir=str(work)))
    assert not list(work.glob("*.pth"))


def test_train_val_files_must_share_categories(sample_root, tmp_path):
    from segkit.coco.files import write_coco
    from segkit.core.errors import CocoError

    val = load_coco(sample_root / "val.json").to_dict()
    val["categories"] = [dict(c, name="Paper pack" if c["name"] == "Paper" else c["name"])
                         for c in val["categories"]]
    other = write_coco(val, tmp_path / "val_other.json")
    with pytest.raises(CocoError):
        run(**tiny_train_params(sample_root, val_file=str(other), iters=2, val_interval=2,
                                weights="none", work_dir=str(tmp_path / "mixed")))
