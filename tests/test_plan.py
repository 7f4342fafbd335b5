"""`segkit plan` (segkit.search.plan, segkit.search.fingerprint): budgets, the group_by the file
names and near-duplicates suggest, and a timed plan of the tiny sample."""

from __future__ import annotations

import pandas as pd
import pytest

from segkit.core.errors import ParameterError
from segkit.search.fingerprint import suggest_group_by
from segkit.search.plan import parse_budget, size_candidates


def test_budgets():
    assert parse_budget("75m") == 4500 and parse_budget("8h") == 28800
    assert parse_budget("1h30m") == 5400 and parse_budget("900s") == 900
    assert parse_budget("90") == 5400
    for bad in ("", "soon", "5x", "0m"):
        with pytest.raises(ParameterError):
            parse_budget(bad)


def test_size_candidates_from_the_native_scale_down():
    assert size_candidates(480, 360, 512, 256) == [(480, 256), (320, 224), (224, 160)]
    assert size_candidates(2448, 3264, 512, 256)[0] == (512, 256)


class _Coco:
    def __init__(self, names):
        self.images = [{"id": i, "file_name": n, "width": 480, "height": 360}
                       for i, n in enumerate(names)]
        self.path = "video.json"


def test_video_frames_are_grouped_by_sequence():
    """CamVid-like names: 3 sequences of frames 30 apart; near-duplicates between neighbouring
    frames, some across frame runs: the sequence prefix keeps every pair inside a group."""
    names = [f"{seq}_{n:05d}.png" for seq, start in (("0016E5", 7950), ("0006R0", 900),
                                                      ("Seq05VD", 0))
             for n in range(start, start + 30 * 12, 30)]
    names += ["0016E5_09000.png"]  # a jump: a second run of 0016E5
    coco = _Coco(names)
    pairs = pd.DataFrame({"image_a": [0, 1, 12, 10], "image_b": [1, 2, 13, 36]})
    found = suggest_group_by(coco, pairs)
    assert found.group_by == r"regex:^(.+)_[A-Za-z]*\d+\.\w+$" and found.n_groups == 3
    table = found.candidates.set_index("group_by")
    assert table.loc["frames:30", "pairs_across"] == 1
    assert suggest_group_by(coco, pairs.iloc[:0]).group_by is None  # no pairs: no groups
    assert suggest_group_by(coco, None).group_by == found.group_by  # no images: names say video


def test_plan_of_the_sample_fits_its_budget_and_checks_as_a_spec(sample_root):
    from segkit.flow.pipeline import plan_pipeline
    from segkit.search.plan import make_plan

    result = make_plan(sample_root, budget="30m", name="plan_test")
    assert result.choice("group_by") is None and result.choice("stratify_by") == "annotations"
    assert result.choice("class_weights") == "balanced"
    assert result.probes and sum(result.estimate.values()) <= 30 * 60
    steps = plan_pipeline(result.spec_path)
    assert [n for n, _, _ in steps] == ["02_split", "04_train", "05_predict"]
    train = steps[1][1]
    assert train["iters"] == result.choice("iters") and train["fold"] == result.choice("fold")
    text = result.report()
    assert "s/iteration" in text and "iters" in text and str(result.spec_path) in text


def test_plan_refuses_gpus_it_cannot_measure(sample_root):
    from segkit.search.plan import gpus_here, make_plan

    with pytest.raises(ParameterError, match="sees"):
        make_plan(sample_root, gpus=gpus_here() + 1, probe=False)


def test_gpu_batch_from_the_memory_probe(monkeypatch, tmp_path):
    import segkit.search.probes as planning

    def fake_probe(params, folder, iters, log_interval, n_val=None):  # 3 GiB an image, 80 GiB
        return planning.Probe(512, 512, params["batch_size"], 0.1, 1.0, 5.0, 3 * 2**30,
                              80 * 2**30)

    monkeypatch.setattr(planning, "probe_run", fake_probe)
    batch, why = planning._gpu_batch({}, tmp_path, 16)
    assert batch == 16 and "22 fit" in why
    monkeypatch.setattr(planning, "probe_run", lambda *a: planning.Probe(
        512, 512, 2, 0.1, 1.0, 5.0, 20 * 2**30, 80 * 2**30))
    assert planning._gpu_batch({}, tmp_path, 16)[0] == 2


def test_plan_for_several_gpus_trains_one_fold_each(sample_root, monkeypatch):
    import segkit.search.plan as planning
    from segkit.flow.pipeline import plan_pipeline

    monkeypatch.setattr(planning, "gpus_here", lambda: 2)
    result = planning.make_plan(sample_root, budget="8h", gpus=2, probe=False, name="plan_gpus")
    steps = plan_pipeline(result.spec_path)
    trains = [p for n, p, _ in steps if n == "04_train"]
    assert len(trains) == 2 and {p["fold"] for p in trains} == set(result.choice("folds"))
    assert steps[-1][0] == "07_ensemble" and "--parallel 2" in result.report()


def test_plan_command_prints_the_reasons_and_writes_the_spec(sample_root, tmp_path, capsys):
    from segkit.flow.cli import main

    out = tmp_path / "plan.yaml"
    assert main(["plan", str(sample_root), "--budget", "20m", "--no-probe",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "group_by" in text and "no near-duplicate pairs" in text and "not timed" in text
    assert out.read_text().startswith(f"# segkit plan {sample_root} --budget 20m")
    assert main(["plan", str(tmp_path), "--no-probe"]) == 2  # no train_all.json there


def test_a_test_of_new_sequences_makes_folds_of_whole_sequences():
    names = [f"{seq}_{n:05d}.png" for seq, start in (("0016E5", 7950), ("0006R0", 900),
                                                      ("Seq05VD", 0))
             for n in range(start, start + 30 * 12, 30)] + ["0016E5_09000.png"]
    coco = _Coco(names)
    pairs = pd.DataFrame({"image_a": [0, 12], "image_b": [1, 13]})  # inside frame runs only
    assert suggest_group_by(coco, pairs).group_by == "frames:30"  # the finest leak-free
    test = ["Seq99XX_00000.png", "Seq99XX_00030.png", "Seq99XX_00060.png", "0016E5_10000.png"]
    found = suggest_group_by(coco, pairs, test)
    assert found.group_by.startswith("regex:") and "75% of the test images" in found.why
