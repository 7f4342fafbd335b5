"""Cross-validation end to end: sweeps in specs, executors, resuming a killed fold, out-of-fold
scores, fold and checkpoint ensembles, leaderboard scores."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from segkit.core.errors import ParameterError, SegkitError
from segkit.core.paths import outputs_dir
from segkit.flow.cli import main
from segkit.flow.executors import (
    NotebookJob,
    check_executor_options,
    resume_parameters,
    slurm_parameters,
    training_run_dir,
)
from segkit.flow.notebook import NOTEBOOKS_DIR
from segkit.flow.pipeline import fill_template, plan_pipeline
from segkit.predict.options import PredictOptions
from segkit.recipe.parameters import check_training_parameters
from tests.conftest import notebook_text

CV_SPEC = NOTEBOOKS_DIR / "cv.yaml"


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_fill_template_replaces_only_the_sweep_keys():
    values = {"fold": 2, "seed": 7}
    assert fill_template("lite0_fold{fold}_s{seed}", values) == "lite0_fold2_s7"
    assert fill_template("{fold}", values) == 2  # a whole placeholder keeps the type
    assert fill_template(r"regex:^(\w{2})_{other}", values) == r"regex:^(\w{2})_{other}"
    assert fill_template(["a{fold}", {"k": "{seed}"}, 3], values) == ["a2", {"k": 7}, 3]


def test_foreach_fans_out_every_combination(tmp_path):
    spec = _spec(tmp_path, """
name: sweep
steps:
  - notebook: 04_train
    foreach: {fold: [0, 1], seed: [1, 2]}
    parameters: {run_name: "r_fold{fold}_seed{seed}", iters: 5}
  - notebook: 05_predict
    foreach: {fold: [0, 1]}
    parameters: {run_dir: "r_fold{fold}_seed1"}
""")
    plan = plan_pipeline(spec)
    trains = [(p["fold"], p["seed"], p["run_name"], o) for n, p, o in plan if n == "04_train"]
    assert [t[:3] for t in trains] == [(0, 1, "r_fold0_seed1"), (0, 2, "r_fold0_seed2"),
                                       (1, 1, "r_fold1_seed1"), (1, 2, "r_fold1_seed2")]
    assert all(o == outputs_dir() / "runs" / name / "04_train.ipynb" for _, _, name, o in trains)
    predicts = [(p["run_dir"], o.name) for n, p, o in plan if n == "05_predict"]
    assert predicts == [("r_fold0_seed1", "05_predict_fold0.ipynb"),
                        ("r_fold1_seed1", "05_predict_fold1.ipynb")]


@pytest.mark.parametrize("text, message", [
    ("parameters: {data_rot: /data/trash}\nsteps:\n  - notebook: 02_split\n",
     r"data_rot='/data/trash': no step's notebook declares it"),
    ("steps:\n  - notebook: 04_train\n    parameters: {run_name: a}\n"
     "  - notebook: 04_train\n    output: x.ipynb\n    parameters: {run_name: a}\n",
     r"step 2 \(04_train\) trains into .*a, as step 1 does"),
    ("steps:\n  - notebook: 04_train\n    foreach: {fold: [0, 1]}\n"
     "    parameters: {run_name: same}\n", r"writes 2 notebooks to 1 places"),
    ("steps:\n  - notebook: 02_split\n    foreach: {fold: [0, 1]}\n",
     r"step 1 \(02_split, fold=0\) sets \['fold'\]"),
    ("steps:\n  - notebook: 02_split\n    foreach: {n_splits: []}\n", r"non-empty lists"),
    ("steps:\n  - notebook: 04_train\n    foreach: {fold: [0, 1]}\n"
     "    parameters: {run_name: 'a{fold}', iters: -3}\n", r"step 1 \(04_train, fold=0\): iters"),
    ("executor: {partition: 3}\nsteps:\n  - notebook: 02_split\n", None),
    ("exector: {}\nsteps:\n  - notebook: 02_split\n", r"unknown keys \['exector'\]"),
])
def test_plan_refuses_bad_sweeps_and_unknown_keys(tmp_path, text, message):
    spec = _spec(tmp_path, text)
    if message is None:  # executor options are checked when the pipeline runs
        from segkit.flow.pipeline import run_pipeline

        with pytest.raises(ParameterError, match="partition=3"):
            run_pipeline(spec, progress=False)
        return
    with pytest.raises(SegkitError, match=message):
        plan_pipeline(spec)


def test_a_misspelt_override_is_refused_by_the_cli(capsys):
    assert main(["pipeline", str(CV_SPEC), "data_rot=/data/trash"]) == 2
    assert "data_rot='/data/trash': no step's notebook declares it" in capsys.readouterr().err


def test_executor_options_and_slurm_parameters():
    options = check_executor_options({"partition": "gpu", "time": 90, "slurm": {"qos": "hi"}},
                                     "spec.yaml")
    params = slurm_parameters(options, 5, "cv-2-04_train")
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor writes

    sbatch = _make_sbatch_string(command="python -m x", folder=outputs_dir() / "jobs",
                                 map_count=8, **params)
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--qos=hi", "--job-name=cv-2-04_train", "%5"):
        assert line in sbatch
    with pytest.raises(ParameterError, match="unknown executor option 'gpus'"):
        check_executor_options({"gpus": 2}, "spec.yaml")
    with pytest.raises(ParameterError, match="time=0"):
        check_executor_options({"time": 0}, "spec.yaml")


def test_resume_only_a_run_of_the_same_parameters(tmp_path):
    params = {"fold": 1, "run_name": "resume_me", "iters": 50, "num_workers": 0}
    folder = training_run_dir(params)
    assert folder == outputs_dir() / "runs" / "resume_me"
    assert resume_parameters("04_train", params) == params  # nothing there yet
    folder.mkdir(parents=True)
    recorded = check_training_parameters({**params, "num_workers": 2})
    (folder / "params.json").write_text(json.dumps(recorded, default=str))
    (folder / "iter_20.pth").write_bytes(b"")
    assert resume_parameters("04_train", params)["resume"] is True
    assert "resume" not in resume_parameters("04_train", {**params, "iters": 60})
    assert resume_parameters("05_predict", params) == params


def test_leaderboard_scores_beside_submissions(tmp_path, capsys):
    from segkit.submission.leaderboard import leaderboard_table, read_scores, write_local_score

    csv = tmp_path / "sub.csv"
    csv.write_text("image_id,PredictionString\na.jpg,0 0\n")
    write_local_score(csv, 0.61, "OOF mIoU")
    assert main(["lb", str(csv), "0.58", "--note", "5 folds"]) == 0
    assert main(["lb", str(csv), "0.59"]) == 0
    table = leaderboard_table()
    assert table["leaderboard"].tolist()[-2:] == [0.58, 0.59]
    assert table["local"].tolist()[-1] == pytest.approx(0.61)
    assert table["note"].tolist()[-2] == "5 folds"
    csv.write_text("image_id,PredictionString\na.jpg,1 1\n")  # rewritten since
    main(["lb", str(csv), "0.5"])
    last = leaderboard_table().iloc[-1]
    assert last["local kind"] == "rewritten since" and last["local"] != last["local"]  # nan
    assert len(read_scores()) == 3  # append-only: the earlier lines stay
    capsys.readouterr()
    assert main(["lb", str(csv), "1.5"]) == 2
    assert main(["lb", str(tmp_path / "none.csv"), "0.5"]) == 2
    (tmp_path / "x.csv").write_text("id,value\n")
    assert main(["lb", str(tmp_path / "x.csv"), "0.5"]) == 2
    err = capsys.readouterr().err
    assert "between 0 and 1" in err and "no such submission" in err and "not a submission" in err


def _fake_run(name: str, val_file: Path, data_root: Path) -> Path:
    folder = outputs_dir() / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    params = check_training_parameters({"fold": None, "train_file": str(val_file),
                                        "val_file": str(val_file), "data_root": str(data_root)})
    (folder / "params.json").write_text(json.dumps(params, default=str))
    (folder / "iter_1.pth").write_bytes(b"")
    return folder


def test_oof_refuses_overlapping_folds_and_different_split_files(sample_root, tmp_path, capsys):
    from segkit.folds.split import split_file
    from segkit.predict.cv import check_folds, recipe_name, recipes

    split_file(sample_root / "train_all.json", tmp_path / "a", n_splits=3)
    split_file(sample_root / "train_all.json", tmp_path / "b", n_splits=3)
    runs = [_fake_run(f"x_fold{k}", tmp_path / "a" / f"fold{k}_val.json", sample_root)
            for k in range(3)]
    other = _fake_run("y_fold1", tmp_path / "b" / "fold1_val.json", sample_root)
    twice = _fake_run("x_fold0_again", tmp_path / "a" / "fold0_val.json", sample_root)
    assert [v.name for _, v in check_folds(runs[::-1])] == [f"fold{k}_val.json" for k in range(3)]
    assert recipe_name(runs[1]) == "x_fold*" and list(recipes(runs)) == ["x_fold*"]
    with pytest.raises(SegkitError, match="folds of different split files"):
        check_folds([runs[0], other])
    with pytest.raises(SegkitError, match="their folds overlap"):
        check_folds([runs[0], twice])
    assert main(["oof", str(runs[0]), str(other)]) == 2
    assert "different split files" in capsys.readouterr().err


def _wait_for(predicate, seconds: float, what: str) -> None:
    end = time.time() + seconds
    while not predicate():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _check_final_model_and_decisions(sample_root, ensemble_csv, score, capsys):
    """cv.yaml's final model (fold=all) and decisions: trained on every image as long as the
    folds' best checkpoints say, voted with the folds on test, the OOF decisions applied."""
    from segkit.predict.decision_record import decided_submission, load_decisions
    from segkit.predict.writing import predict_and_score
    from segkit.recipe.final import final_iterations
    from segkit.results.runs import Run

    full = Run.open("cv_lite0_foldall")
    folds = [f"cv_lite0_fold{k}" for k in range(3)]
    assert full.full_data and full.data()[1] is None
    from mmengine.config import Config

    config = Config.fromfile(str(full.config_path))
    assert [s["ann_file"] for s in config.train_dataloader.dataset.sources] == \
        [str(sample_root / "train_all.json")] and config.val_cfg is None
    final = final_iterations(folds, 24)
    assert config.train_cfg.max_iters == final.iters
    assert final.rule in (full.path / "04_train.ipynb").read_text()
    decisions = load_decisions(outputs_dir() / "decisions" / "cv_lite0" / "decisions.json")
    assert decisions.members == ["cv_lite0_oof"] and decisions.record["folds"] == 3
    assert decisions.miou_before == pytest.approx(score["OOF mIoU"])
    assert [s["decision"] for s in decisions.record["steps"]] == ["weights", "class_bias",
                                                                  "min_area"]
    assert all(s["tried"] for s in decisions.record["steps"][1:])
    local = json.loads(Path(f"{ensemble_csv}.score.json").read_text())
    assert local["kind"].startswith("OOF mIoU with decisions")
    assert local["score"] == pytest.approx(decisions.miou_after)
    assert local["decisions"] == str(decisions.path)
    # the submission: the 3 folds (1 each) and the final model (3: the fold ensemble's weight)
    tests = [outputs_dir() / "predictions" / name / "test" for name in folds +
             ["cv_lite0_foldall"]]
    again = decided_submission(decisions, tests, [1, 1, 1, 3], ensemble_csv.with_name("x.csv"))
    assert again.read_bytes() == ensemble_csv.read_bytes()
    nb = (outputs_dir() / "pipelines" / "cv" / "07_ensemble.ipynb").read_text()
    assert "cv_lite0_foldall: a full-data run of cv_lite0_oof" in nb and "with weight 1" in nb
    assert "min_area (" in nb and "class_bias (" in nb  # the per-class table
    # the same decisions from the command line; 05 applies them to the final model
    assert main(["decide", *folds, "cv_lite0_foldall", "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert "left out cv_lite0_foldall" in out and f"OOF mIoU: {decisions.miou_before:.4f}" in out
    cli = load_decisions("cli")
    assert cli.record["steps"] == decisions.record["steps"]
    done = predict_and_score("cv_lite0_foldall", PredictOptions(flips=("h",)),
                             decisions=cli.path)
    assert done.evaluation is None and done.decided.exists()
    assert json.loads(Path(f"{done.decided}.score.json").read_text())["decisions"] == \
        str(cli.path)


# slow: about 3 minutes alone, and on a loaded machine the kill can come after fold 0 finished
@pytest.mark.slow
def test_cv_spec_with_the_local_executor_and_a_killed_fold(sample_root, tmp_path, capsys):
    """notebooks/cv.yaml on the tiny sample: fold 0 is killed after its first checkpoint and
    resumes when the pipeline runs; OOF score, the final model on every image, decisions on the
    OOF predictions, fold-ensemble submission with them, CV table, and a checkpoint vote of
    fold 1's kept checkpoints."""
    import submitit

    from segkit.flow.pipeline import _plan, load_spec, run_pipeline
    from segkit.predict.members import ensemble_inputs
    from segkit.results.runs import Run

    overrides = {"data_root": str(sample_root), "image_size": 96, "crop_size": 64,
                 "iters": 30, "val_interval": 10, "keep_checkpoints": 2}
    steps = _plan(load_spec(CV_SPEC), CV_SPEC, overrides)
    run_pipeline(_spec(tmp_path, f"steps:\n  - notebook: 02_split\n    parameters: "
                                 f"{{n_splits: 3, output_dir: splits_cv, data_root: "
                                 f"'{sample_root}'}}\n"), progress=False)
    params, output, _ = steps[1].items[0]
    run = Run(output.parent)
    job = submitit.LocalExecutor(folder=tmp_path / "jobs").submit(
        NotebookJob("04_train", params, output, "fold=0",
                    {"SEGKIT_OUTPUTS": str(outputs_dir().resolve())}))
    _wait_for(lambda: run.checkpoints(), 240, "fold 0's first checkpoint")
    job.cancel()
    _wait_for(job.done, 30, "the killed job")
    time.sleep(3)  # the kernel notices its parent is gone within a second
    assert not (run.path / "summary.json").exists(), "fold 0 finished before it was killed"
    killed_at = max(run.checkpoints())
    assert killed_at < 30

    executed = run_pipeline(CV_SPEC, overrides, progress=False, executor="local", parallel=2)
    assert [p for p in executed if p.name == "04_train.ipynb"] == \
        [outputs_dir() / "runs" / f"cv_lite0_fold{k}" / "04_train.ipynb" for k in range(3)] + \
        [outputs_dir() / "runs" / "cv_lite0_foldall" / "04_train.ipynb"]
    assert Run(run.path).parameters["resume"] is True
    assert "resume = True" in output.read_text()
    assert not Run.open("cv_lite0_fold1").parameters["resume"]
    steps_seen = set(run.scalars()["step"])
    assert killed_at in steps_seen and 30 in steps_seen
    fold1 = Run.open("cv_lite0_fold1")
    assert sorted(fold1.checkpoints()) == [20, 30]  # keep_checkpoints=2

    score = json.loads((outputs_dir() / "oof" / "cv_lite0_oof" / "score.json").read_text())
    assert score["images"] == 24 and score["folds"] == 3 and 0 < score["OOF mIoU"] <= 1
    ensemble_csv = outputs_dir() / "ensembles" / "cv_lite0.csv"
    _check_final_model_and_decisions(sample_root, ensemble_csv, score, capsys)
    report = next(p for p in executed if p.name == "08_report.ipynb")
    import nbformat

    assert "OOF mIoU" in notebook_text(nbformat.read(str(report), as_version=4))

    assert main(["oof", "cv_lite0_fold0", "cv_lite0_fold1", "cv_lite0_fold2"]) == 0
    out = capsys.readouterr().out
    assert f"OOF mIoU: {score['OOF mIoU']:.4f}" in out and "+-" in out
    assert main(["oof", "cv_lite0_fold0", "cv_lite0_fold0"]) == 2

    members = ensemble_inputs([fold1], sample_root / "test.json", sample_root,
                              PredictOptions(checkpoints=[20, 30]))
    assert members.names == ["cv_lite0_fold1@20", "cv_lite0_fold1@30"]
    used = members.submit(tmp_path / "ckpt.csv", "soft", test_json=sample_root / "test.json")
    assert used == [1.0, 1.0] and (tmp_path / "ckpt.csv").exists()
