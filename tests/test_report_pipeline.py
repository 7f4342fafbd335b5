"""08_report, pipelines of notebooks, and the demo's spec."""

from pathlib import Path

import numpy as np
import pytest

from segkit.core.errors import SegkitError
from segkit.core.paths import outputs_dir
from segkit.flow.cli import main
from segkit.flow.notebook import NotebookError
from segkit.flow.pipeline import DEMO_SPEC, load_spec, plan_pipeline, run_pipeline
from segkit.results.report import confused_pairs, runs_table
from tests.conftest import notebook_text, run_notebook

ROOT = Path(__file__).resolve().parents[1]


def test_runs_table(trained_run):
    table = runs_table([trained_run.work_dir])
    row = table.iloc[0]
    assert row["run"] == trained_run.work_dir.name and row["iters"] == 150
    assert row["best_mIoU"] == pytest.approx(trained_run.best_miou)
    assert row["minutes"] > 0 and row["IoU Background"] > 0.5


def test_confused_pairs():
    cm = np.array([[90, 10, 0], [30, 70, 0], [0, 0, 5]])
    pairs = confused_pairs(cm, ["a", "b", "c"])
    assert pairs.iloc[0][["truth", "predicted as"]].tolist() == ["b", "a"]
    assert pairs.iloc[0]["share of truth"] == pytest.approx(0.3)


def test_08_report_notebook(trained_run, tmp_path):
    nb = run_notebook("08_report", tmp_path, runs=[str(trained_run.work_dir)], n_worst=2)
    text = notebook_text(nb)
    assert "validation mIoU" in text and trained_run.work_dir.name in text


def test_demo_spec_is_valid():
    names = [name for name, _, _ in plan_pipeline(DEMO_SPEC)]  # parameters checked too
    assert names[0] == "01_eda" and names[-1] == "08_report"


@pytest.mark.parametrize("spec", sorted((ROOT / "benchmarks").glob("*/*.yaml")),
                         ids=lambda p: p.name)
def test_benchmark_specs_are_valid(spec):
    plan = plan_pipeline(spec, {"data_root": "/data/camvid"})
    assert [name for name, _, _ in plan][-1] == "08_report"
    assert all(params.get("data_root", "/data/camvid") == "/data/camvid" for _, params, _ in plan)
    trained = [params["run_name"] for name, params, _ in plan if name == "04_train"]
    assert trained and len(set(trained)) == len(trained)  # no run overwrites another


def test_a_bad_parameter_in_a_late_step_fails_before_the_first_runs(sample_root, tmp_path):
    spec = tmp_path / "late.yaml"
    spec.write_text(f"""
parameters: {{data_root: "{sample_root}"}}
steps:
  - notebook: 02_split
    output: first/02.ipynb
  - notebook: 07_ensemble
    parameters: {{metod: soft}}
""")
    with pytest.raises(SegkitError, match=r"step 2 \(07_ensemble\) sets \['metod'\]"):
        run_pipeline(spec, progress=False)
    assert not (outputs_dir() / "first").exists()


def test_pipeline_runs_steps_and_stops_at_failure(sample_root, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
name: t
parameters: {{data_root: "{sample_root}"}}
steps:
  - notebook: 02_split
    parameters: {{n_splits: 3}}
  - notebook: 02_split
    output: broken/02.ipynb
    parameters: {{n_splits: 1000}}
  - notebook: 01_eda
""")
    with pytest.raises(NotebookError, match=r"step 2 of .*02_split.ipynb failed in cell .*"
                                            r"executed notebook: .*broken/02.ipynb"):
        run_pipeline(spec, progress=False)
    assert (outputs_dir() / "broken" / "02.html").exists()  # a failed notebook's report too
    first = tmp_path / "ok.yaml"
    first.write_text(f"""
steps:
  - notebook: 02_split
    parameters: {{n_splits: 3, data_root: "{sample_root}"}}
""")
    executed = run_pipeline(first, progress=False)
    assert executed[0].name == "02_split.ipynb" and executed[0].parent.name == "ok"
    assert executed[0].with_suffix(".html").exists() and (outputs_dir() / "index.html").exists()


def test_a_relative_data_root_means_the_folder_seen_from_where_the_pipeline_runs(
        sample_root, tmp_path, monkeypatch):
    from segkit.flow.notebook import run_notebook as execute

    monkeypatch.chdir(sample_root.parent)  # the kernel itself runs in notebooks/
    out = execute("02_split", tmp_path / "02.ipynb",
                  {"data_root": sample_root.name, "n_splits": 3})
    assert str(sample_root) in out.read_text()


def test_bad_specs(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - notebook: 09_nothing\n")
    with pytest.raises(SegkitError, match="notebook '09_nothing' not found"):
        load_spec(bad)
    bad.write_text("steps:\n  - notebook: 02_split\n    parameters: {n_split: 3}\n")
    assert main(["pipeline", str(bad)]) == 2
    assert "sets ['n_split'], which the notebook does not declare" in capsys.readouterr().err
