"""Atomic writes and the outputs folder."""

import os
import stat

import pytest

from segkit.core.paths import atomic_path, outputs_dir, resolve_output_path, write_text_atomic


def test_atomic_write_has_the_mode_of_a_plain_write(tmp_path):
    write_text_atomic(tmp_path / "a.csv", "x\n")
    (tmp_path / "b.csv").write_text("x\n")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "a.csv") == mode(tmp_path / "b.csv")  # not mkstemp's private 0600
    assert (tmp_path / "a.csv").read_text() == "x\n"


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    target = tmp_path / "sub.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["sub.csv"]


def test_relative_paths_fall_back_to_the_outputs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (outputs_dir() / "runs" / "r").mkdir(parents=True, exist_ok=True)
    assert resolve_output_path("runs/r") == outputs_dir() / "runs" / "r"
    (tmp_path / "runs" / "r").mkdir(parents=True)
    assert resolve_output_path("runs/r") == tmp_path.joinpath("runs", "r").relative_to(tmp_path)
