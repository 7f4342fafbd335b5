"""The command line as a new user meets it, and a clean tree after set-up."""

import shutil
import subprocess
import sys

import pytest

from segkit.core.paths import PROJECT_ROOT
from segkit.flow.cli import build_parser, main
from segkit.recipe.parameters import TRAINING_PARAMETERS


def test_version_and_usage_name(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("segkit ")
    assert build_parser().format_usage().startswith("usage: segkit")


def test_train_help_lists_every_parameter_with_its_default():
    text = subprocess.run([sys.executable, "-m", "segkit", "train", "--help"],
                          capture_output=True, text=True, check=True).stdout
    for p in TRAINING_PARAMETERS:
        line = next((ln for ln in text.splitlines() if ln.split()[:1] == [p.name]), None)
        assert line is not None and repr(p.default) in line, p.name


def test_every_option_shows_its_default():
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.default not in (None, "", [], False) \
                    and action.dest != "help":
                assert f"default: {action.default}" in " ".join(text.split()), (name, action.dest)


def test_bad_training_parameters_are_refused_before_any_work(capsys):
    for bad, message in (("lr=-0.1", "lr=-0.1: must be at least 0"),
                         ("iters=0", "iters=0: must be at least 1"),
                         ("batch_size=0", "batch_size=0: must be at least 1"),
                         ("val_interval=0", "val_interval=0: must be at least 1"),
                         ("image_size=abc", "image_size='abc': expected an integer"),
                         ("fold=abc", "fold='abc': expected a fold index (0, 1, ...), all"),
                         ("fold=-1", "fold=-1: expected a fold index"),
                         ("holdout_file=x.json", "holdout_file='x.json' is for full-data runs"),
                         ("amp=maybe", "amp='maybe': expected true or false"),
                         ("augment=[sparkle]", "sparkle"),
                         ("schedule=linear", "schedule='linear'; allowed: poly, cosine")):
        assert main(["train", bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (bad, err)
        assert "Traceback" not in err


def _filter_command() -> list[str]:
    """The clean filter `make setup` installs (the Makefile's flags)."""
    import shlex

    flags = next(line.split(":=", 1)[1] for line in (PROJECT_ROOT / "Makefile").read_text()
                 .splitlines() if line.startswith("NBSTRIPOUT_FLAGS"))
    return [sys.executable, "-m", "nbstripout", *shlex.split(flags)]


@pytest.mark.skipif(shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists(),
                    reason="needs the git checkout")
def test_committed_notebooks_are_what_the_filter_writes():
    """A fresh clone plus `make setup`'s nbstripout filter leaves `git status` empty: every
    committed notebook is already in the filter's form."""
    tracked = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=PROJECT_ROOT, text=True,
                             capture_output=True, check=True).stdout.split()
    assert len(tracked) >= 8
    for path in tracked:
        committed = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=PROJECT_ROOT,
                                   capture_output=True, check=True).stdout
        cleaned = subprocess.run(_filter_command(), input=committed, capture_output=True,
                                 check=True).stdout
        assert cleaned == committed, f"{path} changes under the nbstripout filter"


def test_ensemble_refuses_to_write_over_one_of_its_inputs(tmp_path, capsys):
    import numpy as np

    from segkit.submission.files import write_submission

    inputs = []
    for k in range(2):
        path = tmp_path / f"s{k}.csv"
        write_submission(path, ["a.jpg"], [np.full((4, 4), k, np.uint8)], size=(4, 4))
        inputs.append(path)
    before = inputs[0].read_bytes()
    code = main(["ensemble", "--method", "hard", "--size", "4", "4", "--out",
                 str(tmp_path / "." / "s0.csv"), *map(str, inputs)])
    assert code == 2 and "is also an input" in capsys.readouterr().err
    assert inputs[0].read_bytes() == before


def test_every_path_parameter_of_every_notebook_means_the_callers_folder():
    """A path a user types is made absolute before the kernel (which runs in notebooks/) sees
    it; the rest are file names relative to data_root, by design."""
    from segkit.flow.notebook import NOTEBOOKS_DIR, PATH_PARAMETERS, notebook_parameters

    relative_to_data_root = {"annotation_file", "test_file", "holdout_file"}
    for path in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")):
        for name in notebook_parameters(path):
            if name.endswith(("_dir", "_dirs", "_root", "_file", "_files", "_from")) or \
                    name in ("runs", "curve_runs", "error_run"):
                assert name in PATH_PARAMETERS or name in relative_to_data_root, (path.stem, name)


def test_a_pipeline_runs_its_notebooks_in_the_kernel_asked_for(monkeypatch, tmp_path):
    import segkit.flow.pipeline as pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run_notebook",
                        lambda name, output, params, kernel="python3": seen.append(kernel))
    spec = tmp_path / "one.yaml"
    spec.write_text("steps:\n  - notebook: 08_report\n")
    pipeline.run_pipeline(spec, progress=False, kernel="segkit")
    assert seen == ["segkit"]


def test_make_bench_lists_the_benchmarks():
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "benchmarks" / "run_all.py"),
                           "--list"], capture_output=True, text=True, check=True)
    assert "bench_data.py" in done.stdout and "bench_submission.py" in done.stdout
