"""Research freedom: augmentations, losses and schedules by name, cfg_options, whole-config
mode, zoo weights of any mmseg config, configs that stand alone, validation pictures."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from segkit.core.classes import IGNORE_INDEX
from segkit.core.errors import ParameterError
from segkit.recipe.augment import AUGMENTATIONS, pipelines
from segkit.recipe.losses import LOSS_TERMS, loss_config
from segkit.recipe.schedules import SCHEDULES, schedulers
from segkit.train.preview import augmented_samples
from segkit.train.training import build_config, run
from tests.conftest import tiny_train_params

PER_SAMPLE = ["flip", "vflip:0.3", {"rotate": {"prob": 0.5, "degree": 20}}, "rot_flip",
              "photometric:0.5", "clahe", "cutout", "noise", "brightness_contrast", "hsv",
              "blur", "grid_distortion", "elastic", "albu.RandomGamma:0.3", "resize_crop"]
ALL_LOSSES = "+".join(f"{t}:0.5" for t in LOSS_TERMS)
# every augmentation, loss and schedule name in a few two-iteration runs
RUNS = {
    "samplewise": dict(augment=PER_SAMPLE, loss=ALL_LOSSES, schedule="cosine_restarts"),
    "mixes": dict(augment=["mosaic", "cutmix", "classmix"], loss="ce:1.0+lovasz:0.5",
                  schedule={"step": {"milestones": [0.5]}}),
    "onecycle": dict(augment=["flip"], loss="ohem", schedule="onecycle"),
    "cosine": dict(augment=["flip", "resize_crop", "photometric"], loss="smooth_ce",
                   schedule="cosine"),
}


def test_the_runs_cover_every_name():
    augment = {a if isinstance(a, str) else next(iter(a)) for r in RUNS.values()
               for a in r["augment"]}
    assert {a.split(":")[0] for a in augment} >= set(AUGMENTATIONS)
    assert {r["schedule"] if isinstance(r["schedule"], str) else next(iter(r["schedule"]))
            for r in RUNS.values()} | {"poly"} == set(SCHEDULES)


@pytest.fixture(scope="module")
def research_run(sample_root, tmp_path_factory):
    """research_run(name): the two-iteration run RUNS[name] (each trained once per module)."""
    base, done = tmp_path_factory.mktemp("research"), {}

    def get(name):
        if name not in done:
            done[name] = run(**tiny_train_params(
                sample_root, iters=2, val_interval=2, log_interval=1, weights="none",
                vis_images=2, cfg_options={"model.decode_head.dropout_ratio": 0.2},
                work_dir=str(base / name), **RUNS[name]))
        return done[name]
    return get


def _check_run(result):
    losses = result.scalars["loss"].dropna()
    assert len(losses) == 2 and np.isfinite(losses).all()
    params = json.loads((result.work_dir / "params.json").read_text())
    assert params["cfg_options"] == {"model.decode_head.dropout_ratio": 0.2}
    assert "dropout_ratio=0.2" in (result.work_dir / "config.py").read_text().replace(" ", "")
    # saved once: no second copy of the config (<timestamp>.py) beside it
    assert [p.name for p in result.work_dir.glob("*.py")] == ["config.py"]


def test_every_sample_augmentation_and_loss_term_trains(research_run):
    """One run: every per-sample augmentation, every loss term, cosine restarts, cfg_options,
    and validation pictures in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = research_run("samplewise")
    _check_run(result)
    assert {f"decode.loss_{t}" for t in LOSS_TERMS} <= set(result.scalars.columns)
    work = result.work_dir
    assert len(list(work.glob("*/vis_data/vis_image/val_*.png"))) >= 2
    events = EventAccumulator(str(next(work.glob("*/vis_data/events.out.tfevents.*"))))
    events.Reload()
    assert any(tag.startswith("val_") for tag in events.Tags()["images"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixes", "onecycle", "cosine"])
def test_batch_mixes_mosaic_and_the_other_schedules_train(name, research_run):
    _check_run(research_run(name))


@pytest.mark.slow
def test_saved_config_and_checkpoint_run_in_mmseg_without_segkit(research_run, sample_root):
    """mmseg's own inference API on a run folder, in a fresh Python that never imports segkit
    by hand: the config's custom_imports brings segkit's parts."""
    work = research_run("mixes").work_dir  # MixSegDataPreProcessor, LovaszSoftmaxLoss, ...
    image = next((sample_root).glob("batch_*/*.jpg"))
    code = textwrap.dedent(f"""
        import sys
        from mmseg.apis import inference_model, init_model
        model = init_model({str(work / 'config.py')!r}, {str(work / 'iter_2.pth')!r},
                           device="cpu")
        result = inference_model(model, {str(image)!r})
        print(tuple(result.pred_sem_seg.data.shape), "segkit.train" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "(1, 96, 96) True"


def test_todays_names_make_the_configs_they_always_made(sample_root):
    scale, crop = (128, 128), (96, 96)
    train, val = pipelines(128, 96, ["flip", "resize_crop", "photometric"])
    assert train == [
        dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
        dict(type="RandomResize", scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs")]
    assert pipelines(128, 96, ["photometric", "flip"])[0][2:-1] == [
        dict(type="Resize", scale=scale, keep_ratio=True), dict(type="RandomCrop", crop_size=crop),
        dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion")]
    ce = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, class_weight=None,
              avg_non_ignore=True, loss_name="loss_ce")
    dice = dict(type="MaskedDiceLoss", loss_weight=1.0, ignore_index=255, loss_name="loss_dice")
    assert loss_config("ce", None, 11) == ce
    assert loss_config("ce+dice", None, 11) == [ce, dice]
    assert loss_config("focal", None, 11) == dict(type="SoftmaxFocalLoss", gamma=2.0,
                                                  class_weight=None, loss_weight=1.0,
                                                  loss_name="loss_focal")
    assert schedulers("poly", 0.01, 100, 10)[1] == dict(
        type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=10, end=100)
    assert schedulers("cosine", 0.01, 100, 10)[1] == dict(
        type="CosineAnnealingLR", eta_min=0.01 * 1e-3, by_epoch=False, begin=10, end=100,
        T_max=90)


def _lrs(schedule, iters=40, warmup=5):
    """The learning rate of two param groups (lr 1.0 and 0.1) at each iteration."""
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS

    import segkit.train  # noqa: F401  (GroupOneCycleLR)

    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 1.0},
                           {"params": [params[1]], "lr": 0.1}], lr=1.0)
    wrapper = OptimWrapper(opt)
    built = [PARAM_SCHEDULERS.build(dict(cfg, optimizer=wrapper))
             for cfg in schedulers(schedule, 1.0, iters, warmup)]
    out = []
    for _ in range(iters):
        out.append([g["lr"] for g in opt.param_groups])
        for s in built:
            s.step()
    return np.array(out)


def test_schedules_warm_up_then_follow_their_shape():
    for name in SCHEDULES:
        lrs = _lrs(name)
        assert lrs[0, 0] < 0.1 and lrs[:, 0].max() == pytest.approx(lrs[:, 1].max() * 10), name
        assert np.all(np.diff(lrs[:5, 0]) > 0), name  # the warm-up rises
    step = _lrs({"step": {"milestones": [0.5], "gamma": 0.1}})[:, 0]
    assert step[5:22] == pytest.approx(1.0) and step[23:] == pytest.approx(0.1)
    restarts = _lrs({"cosine_restarts": {"cycles": 5}})[:, 0]
    assert (np.diff(restarts[5:]) > 0.5).sum() == 4  # four jumps back up
    onecycle = _lrs("onecycle")
    assert onecycle[:, 0].argmax() in (4, 5) and onecycle[-1, 0] < 1e-3


def test_lovasz_is_the_jaccard_loss_on_hard_predictions():
    """Lovasz extension is tight on the vertices: for one-hot probabilities the loss equals
    the mean over present classes of 1 - IoU (Berman et al., 2018)."""
    from segkit.train.losses import LovaszSoftmaxLoss

    gen = torch.Generator().manual_seed(3)
    label = torch.randint(0, 4, (2, 12, 12), generator=gen)
    pred = torch.randint(0, 4, (2, 12, 12), generator=gen)
    label[0, :3] = IGNORE_INDEX
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 1e4
    valid = label != IGNORE_INDEX
    ious = [((pred == c) & (label == c) & valid).sum() / (((pred == c) | (label == c)) & valid).sum()
            for c in range(4) if (label[valid] == c).any()]
    expected = 1 - torch.stack(ious).float().mean()
    assert LovaszSoftmaxLoss()(logits, label) == pytest.approx(float(expected), abs=1e-5)


def test_ohem_and_smoothing_reduce_to_cross_entropy():
    from segkit.train.losses import OhemCrossEntropyLoss, SmoothCrossEntropyLoss

    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 8, 8, generator=gen)
    label = torch.randint(0, 5, (2, 8, 8), generator=gen)
    label[1, 2:5] = IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy(logits, label, ignore_index=IGNORE_INDEX)
    assert OhemCrossEntropyLoss(thresh=1.01)(logits, label) == pytest.approx(float(ce), rel=1e-5)
    assert SmoothCrossEntropyLoss(smoothing=0.0)(logits, label) == pytest.approx(float(ce),
                                                                                 rel=1e-5)
    smooth = torch.nn.functional.cross_entropy(logits, label, ignore_index=IGNORE_INDEX,
                                               label_smoothing=0.2)
    assert SmoothCrossEntropyLoss(smoothing=0.2)(logits, label) == pytest.approx(float(smooth),
                                                                                 rel=1e-5)
    hard = OhemCrossEntropyLoss(thresh=0.0, min_kept=0.25)(logits, label)
    assert hard > ce  # the hardest quarter of the pixels costs more than the average


@pytest.mark.parametrize("mix", ["SegCutMix", "SegClassMix"])
def test_batch_mixes_move_images_and_labels_together(mix):
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    import segkit.train  # noqa: F401

    torch.manual_seed(0)
    n = 6
    inputs = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16).clone()
    samples = []
    for i in range(n):
        sample = SegDataSample()
        label = torch.full((1, 16, 16), i % 3, dtype=torch.long)
        label[:, :8] = 3 + i  # two classes per image
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    originals = [s.gt_sem_seg.data.clone() for s in samples]
    out, samples = MODELS.build(dict(type=mix, prob=1.0))(inputs, samples)
    changed = 0
    for i in range(n):
        source = out[i, 0].long()  # which image each pixel came from
        assert torch.equal(out[i, 0], out[i, 2])
        expected = torch.stack([originals[j][0] for j in range(n)])[source,
                                                                      torch.arange(16)[:, None],
                                                                      torch.arange(16)]
        assert torch.equal(samples[i].gt_sem_seg.data[0], expected)
        changed += int((source != i).any())
    assert changed >= n // 2


def test_augmented_samples_show_what_the_model_sees(sample_root):
    import matplotlib

    matplotlib.use("Agg")
    from segkit.train.preview import show_augmented

    params = tiny_train_params(sample_root, weights="none", augment=["rotate:1", "cutmix:1"])
    images, labels = augmented_samples(params, n=4)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (4, 64, 64) and set(np.unique(labels)) <= set(range(11)) | {255}
    assert (labels == IGNORE_INDEX).any()  # rotation corners are ignored, not background
    fig = show_augmented(params, n=4, per_row=2)
    assert len(fig.axes) == 8


@pytest.mark.parametrize("params,message", [
    (dict(augment=["flop"]), "augment has 'flop'; allowed: resize_crop, mosaic, flip"),
    (dict(augment=["mixup"]), "mixup.*not offered.*cutmix"),
    (dict(augment=["rotate:1.5"]), "probability 1.5 is not between 0 and 1"),
    (dict(augment=[{"rotate": {"degre": 3}}]), r"unknown options \['degre'\]; allowed: prob"),
    (dict(augment=["albu.NoSuchThing"]), "albumentations has no transform 'NoSuchThing'"),
    (dict(loss="ce:1+l2:1"), "allowed: ce, focal, dice, lovasz, ohem, smooth_ce.*no term 'l2'"),
    (dict(loss="ce+ce"), "names a term twice"),
    (dict(schedule="linear"), "schedule='linear'; allowed: poly, cosine, cosine_restarts"),
    (dict(schedule={"step": {"milestones": [0.9, 0.5]}}), "increasing fractions"),
    (dict(cfg_options={"model.decode_hed.dropout_ratio": 0.2}), "no 'decode_hed' there"),
    (dict(cfg_options="model.decode_head.dropout_ratio"), "expected key=value pairs"),
    (dict(config_mode="partial"), "config_mode='partial'; allowed: segkit, whole"),
])
def test_bad_research_parameters_are_refused_by_name(params, message, sample_root):
    with pytest.raises(ParameterError, match=message):
        build_config(**tiny_train_params(sample_root, weights="none", **params))


def test_cfg_options_forms(sample_root):
    for form in ({"model.decode_head.dropout_ratio": 0.3, "train_dataloader.batch_size": 2},
                 "{model.decode_head.dropout_ratio: 0.3, train_dataloader.batch_size: 2}",
                 "model.decode_head.dropout_ratio=0.3 train_dataloader.batch_size=2"):
        cfg = build_config(**tiny_train_params(sample_root, weights="none", cfg_options=form))
        assert cfg["model"]["decode_head"]["dropout_ratio"] == 0.3
        assert cfg["train_dataloader"]["batch_size"] == 2
    cfg = build_config(**tiny_train_params(
        sample_root, weights="none", loss="ce+lovasz",
        cfg_options={"model.decode_head.loss_decode.1.per_image": True,
                     "model.decode_head.sampler": {"type": "OHEMPixelSampler", "thresh": 0.7}}))
    assert cfg["model"]["decode_head"]["loss_decode"][1]["per_image"] is True
    assert cfg["model"]["decode_head"]["sampler"]["type"] == "OHEMPixelSampler"


WHOLE_CONFIG = """
default_scope = "mmseg"
crop_size = (64, 64)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=255, size=crop_size),
    backbone=dict(type="EfficientNetLite0", pretrained=False),
    decode_head=dict(type="SegformerHead", in_channels=[24, 40, 112, 320],
                     in_index=[0, 1, 2, 3], channels=32, dropout_ratio=0.1, num_classes=150,
                     norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                      loss_weight=1.0)),
    train_cfg=dict(), test_cfg=dict(mode="whole"))
train_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations",
                                                       reduce_zero_label=True),
                  dict(type="Resize", scale=(96, 96), keep_ratio=True),
                  dict(type="RandomCrop", crop_size=crop_size), dict(type="PackSegInputs")]
test_pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(96, 96),
                                                      keep_ratio=True),
                 dict(type="LoadAnnotations", reduce_zero_label=True),
                 dict(type="PackSegInputs")]
train_dataloader = dict(batch_size=2, num_workers=0,
                        sampler=dict(type="InfiniteSampler", shuffle=True),
                        dataset=dict(type="ADE20KDataset", data_root="data/ade",
                                     data_prefix=dict(img_path="images/training",
                                                      seg_map_path="annotations/training"),
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0,
                      sampler=dict(type="DefaultSampler", shuffle=False),
                      dataset=dict(type="ADE20KDataset", data_root="data/ade",
                                   data_prefix=dict(img_path="images/validation",
                                                    seg_map_path="annotations/validation"),
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01, momentum=0.9))
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=3,
                        by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=3, val_interval=3)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(timer=dict(type="IterTimerHook"),
                     logger=dict(type="LoggerHook", interval=1, log_metric_by_epoch=False),
                     param_scheduler=dict(type="ParamSchedulerHook"),
                     checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=3))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_level = "INFO"
load_from = None
resume = False
"""


@pytest.mark.slow
def test_whole_mode_trains_a_config_file_as_written(sample_root, tmp_path):
    path = tmp_path / "my_lite0_ade.py"
    path.write_text(WHOLE_CONFIG)
    params = tiny_train_params(sample_root, model=str(path), config_mode="whole",
                               work_dir=str(tmp_path / "whole"), lr=0.5,
                               cfg_options={"train_cfg.max_iters": 2, "train_cfg.val_interval": 2,
                                            "default_hooks.checkpoint.interval": 2,
                                            "param_scheduler.0.end": 2})
    with pytest.warns(UserWarning, match=r"as written and ignores \[.*'lr'"):
        cfg = build_config(**params)
    train = cfg["train_dataloader"]
    assert train["batch_size"] == 2 and train["dataset"]["type"] == "CocoSegDataset"
    assert train["dataset"]["pipeline"][1] == dict(type="LoadAnnotations",
                                                   reduce_zero_label=False)
    assert cfg["model"]["decode_head"]["num_classes"] == 11
    assert cfg["optim_wrapper"]["optimizer"]["lr"] == 0.01  # the file's, not segkit's
    assert cfg["val_evaluator"]["type"] == "SegkitIoUMetric"
    assert "segkit.train" in cfg["custom_imports"]["imports"]
    with pytest.warns(UserWarning):
        result = run(**params)
    assert result.last_checkpoint.name == "iter_2.pth" and 0 <= result.best_miou <= 1
    assert "CocoSegDataset" in (result.work_dir / "config.py").read_text()


def test_whole_mode_keeps_a_zoo_config_and_its_weights(sample_root):
    with pytest.warns(UserWarning, match="ignores"):  # the tiny image and crop sizes
        cfg = build_config(**tiny_train_params(sample_root, model="segformer_b0",
                                               config_mode="whole", weights="zoo"))
    assert cfg["load_from"].endswith(".pth") and "segformer" in cfg["load_from"]
    assert cfg["train_cfg"]["max_iters"] == 160000  # as written
    assert cfg["train_dataloader"]["dataset"]["type"] == "CocoSegDataset"
    assert cfg["model"]["decode_head"]["num_classes"] == 11
    assert cfg["model"]["decode_head"]["norm_cfg"]["type"] == "BN"  # SyncBN on one device
    with pytest.raises(ParameterError, match="no config file"):
        build_config(**tiny_train_params(sample_root, config_mode="whole"))


def test_zoo_and_backbone_weights_of_any_mmseg_config(tmp_path):
    from segkit.train.models import CATALOGUE, mmseg_configs_dir, model_config

    name = "pspnet/pspnet_r50-d8_4xb4-80k_ade20k-512x512.py"
    assert all(spec.config != name for spec in CATALOGUE.values())
    model, url = model_config(name, num_classes=11, weights="zoo")
    assert url.startswith("https://") and "pspnet_r50-d8_512x512_80k_ade20k" in url
    assert model["decode_head"]["num_classes"] == 11
    # a copy of the config elsewhere finds the same checkpoint by its file name
    copy = tmp_path / "pspnet_r50-d8_4xb4-80k_ade20k-512x512.py"
    copy.write_text((mmseg_configs_dir() / name).read_text().replace(
        "'../_base_", f"'{mmseg_configs_dir() / '_base_'}"))
    assert model_config(str(copy), num_classes=11, weights="zoo")[1] == url
    backbone, none = model_config(name, num_classes=11, weights="backbone")
    assert none is None and backbone["pretrained"] == "open-mmlab://resnet50_v1c"
    unknown = tmp_path / "my_own_model.py"
    unknown.write_text('model = dict(type="EncoderDecoder", backbone=dict(type="ResNetV1c", '
                       'depth=18), decode_head=dict(type="FCNHead", in_channels=512, '
                       'channels=64, num_classes=150))\n')
    with pytest.raises(ParameterError, match=r"no zoo checkpoint for my_own_model.py: it is in "
                                             r"none of the \d+ metafile.yaml"):
        model_config(str(unknown), num_classes=11, weights="zoo")
    with pytest.raises(ParameterError, match="no backbone weights for my_own_model.py"):
        model_config(str(unknown), num_classes=11, weights="backbone")


def test_mask2former_names_the_options_it_ignores(sample_root):
    with pytest.warns(UserWarning, match=r"ignores loss='focal', class_weights="):
        build_config(**tiny_train_params(sample_root, model="mask2former_swin_t",
                                         weights="none", loss="focal",
                                         class_weights=[1.0] * 11))


def test_wandb_goes_offline_without_a_key(monkeypatch, tmp_path):
    from segkit.train.tracking import vis_backends

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    params = dict(wandb=True, wandb_project="trash", wandb_run="")
    backend = vis_backends(params, "lite0_fold0")[-1]
    assert backend == dict(type="WandbVisBackend", init_kwargs=dict(
        project="trash", name="lite0_fold0", mode="offline"))
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's choice is left alone
    assert "mode" not in vis_backends(params, "x")[-1]["init_kwargs"]
    assert [b["type"] for b in vis_backends(dict(wandb=False))] == [
        "LocalVisBackend", "TensorboardVisBackend"]
