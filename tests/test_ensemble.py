"""segkit.predict.ensemble: the vote rule (ties, permutations), hard vote over CSVs, soft vote over
prediction folders, greedy selection and the disagreement map."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from segkit.core.errors import ParameterError, SegkitError, SubmissionError
from segkit.flow.cli import main
from segkit.predict.ensemble import (
    greedy_selection,
    iter_soft_vote,
    soft_vote,
    write_ensemble_submission,
)
from segkit.results.predictions import save_probs, write_prediction_meta
from segkit.submission.codec import HEADER
from segkit.submission.files import write_submission
from segkit.submission.reader import read_submission
from segkit.submission.vote import disagreement, hard_vote, model_ranking, weighted_vote

SIZE = (8, 8)
NAMES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


def reference_vote(labels: np.ndarray, weights, num_classes: int) -> np.ndarray:
    """The documented rule, pixel by pixel: class scores, then the best-ranked voter of a
    top-scoring class."""
    ranking = sorted(range(len(weights)), key=lambda m: (-weights[m], m))
    flat = labels.reshape(len(weights), -1)
    out = np.empty(flat.shape[1], np.uint8)
    for p in range(flat.shape[1]):
        score = [0.0] * num_classes
        for m in ranking:
            score[flat[m, p]] += weights[m]
        top = {c for c in range(num_classes) if score[c] == max(score)}
        out[p] = next(flat[m, p] for m in ranking if flat[m, p] in top)
    return out.reshape(labels.shape[1:])


# ---------------------------------------------------------------------------------------------
# The vote rule
# ---------------------------------------------------------------------------------------------

def test_model_ranking_is_weight_then_position():
    assert model_ranking([1, 2, 1, 2]) == [1, 3, 0, 2]
    assert model_ranking([0.5, 0.5]) == [0, 1]


@pytest.mark.parametrize("labels, weights, expected", [
    ([0, 1, 1], None, 1),                  # plain majority
    ([3, 4], None, 3),                     # 1-1 tie: the earlier model
    ([3, 4], [1, 2], 4),                   # higher weight wins outright
    ([0, 1, 1, 2, 2], None, 1),            # 2-2 tie between 1 and 2; model 0 voted for neither:
    ([0, 2, 2, 1, 1], None, 2),            # the first model voting for a tied class decides
    ([5, 6, 6], [2, 1, 1], 5),             # 2 vs 1+1 tie: model 0 ranks first (weight 2)
    ([6, 6, 5], [1, 1, 2], 5),             # same, model 2 ranks first by weight
    ([1, 2, 3], [1, 1.5, 1.5], 2),         # 1.5-1.5 tie: the earlier of the heavy models
    ([1, 2, 2], [3, 1, 1], 1),             # 3 beats 2
    ([1, 2, 2], [0.5, 0.25, 0.25], 1),     # fractional weights tie exactly: 0.5 ranks first
    ([1, 2, 2], [0, 1, 0], 2),             # a zero weight never decides
])
def test_tie_rule_examples(labels, weights, expected):
    votes = np.array(labels, np.uint8).reshape(-1, 1)
    assert weighted_vote(votes, weights, num_classes=7)[0] == expected


def test_vote_matches_the_documented_rule_on_random_cases():
    rng = np.random.default_rng(1)
    for _ in range(60):
        models, classes = int(rng.integers(2, 7)), int(rng.integers(2, 6))
        labels = rng.integers(0, classes, (models, 5, 7))
        weights = rng.choice([0.1, 0.3, 0.5, 1, 1, 2, 3, 1e-9, 7.25], models).tolist()
        np.testing.assert_array_equal(weighted_vote(labels, weights, classes),
                                      reference_vote(labels, weights, classes))


def test_permuting_equal_weight_inputs_changes_only_exact_ties():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (5, 32, 32)).astype(np.uint8)
    counts = np.stack([(labels == c).sum(0) for c in range(4)])
    tied = (counts == counts.max(0)).sum(0) > 1
    assert tied.any() and not tied.all()  # the example has both kinds of pixels
    base = weighted_vote(labels, num_classes=4)
    changed = np.zeros_like(tied)
    for order in itertools.permutations(range(5)):
        vote = weighted_vote(labels[list(order)], num_classes=4)
        np.testing.assert_array_equal(vote[~tied], base[~tied])
        changed |= vote != base
    assert changed[tied].any()  # ties do follow the input order


def test_permuting_inputs_with_their_distinct_weights_changes_nothing():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (4, 16, 16)).astype(np.uint8)
    weights = [0.3, 0.7, 0.2, 0.8]  # 0.3 + 0.7 == 0.2 + 0.8 exactly: class ties happen
    base = weighted_vote(labels, weights, num_classes=3)
    for order in itertools.permutations(range(4)):
        vote = weighted_vote(labels[list(order)], [weights[i] for i in order], num_classes=3)
        np.testing.assert_array_equal(vote, base)


def test_vote_rejects_bad_arguments():
    labels = np.zeros((2, 4), np.uint8)
    with pytest.raises(ParameterError, match="3 weights for 2"):
        weighted_vote(labels, [1, 1, 1])
    with pytest.raises(ParameterError, match=">= 0"):
        weighted_vote(labels, [1, -1])
    with pytest.raises(ParameterError, match="not all 0"):
        weighted_vote(labels, [0, 0])
    with pytest.raises(ParameterError, match="0..10"):
        weighted_vote(np.full((2, 4), 11), num_classes=11)


def test_disagreement_is_the_share_of_models_against_the_vote():
    maps = [np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 3]]), np.array([[0, 2], [4, 4]])]
    np.testing.assert_allclose(disagreement(maps), [[0, 1 / 3], [1 / 3, 2 / 3]], rtol=1e-6)
    with pytest.raises(ParameterError, match="at least two"):
        disagreement([maps[0]])


# ---------------------------------------------------------------------------------------------
# Hard vote over CSVs
# ---------------------------------------------------------------------------------------------

def make_csvs(tmp_path, count: int, seed: int = 0, names=NAMES) -> tuple[list, np.ndarray]:
    """`count` submissions of random 8x8 maps; returns paths and labels (model, image, H, W)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 11, (count, len(names), *SIZE)).astype(np.uint8)
    paths = [write_submission(tmp_path / f"in{k}.csv", names, labels[k], size=SIZE)
             for k in range(count)]
    return paths, labels


def test_hard_vote_votes_every_row(tmp_path):
    paths, labels = make_csvs(tmp_path, 3)
    weights = [1, 2, 1.5]
    out = hard_vote(paths, tmp_path / "vote.csv", weights, size=SIZE)
    names, values = read_submission(out, size=SIZE)
    assert names == NAMES
    for i in range(len(NAMES)):
        np.testing.assert_array_equal(values[i].reshape(SIZE),
                                      reference_vote(labels[:, i], weights, 11))
    again = hard_vote(paths, tmp_path / "again.csv", weights, size=SIZE)
    assert again.read_bytes() == out.read_bytes()


def test_hard_vote_full_size_rows(tmp_path):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 11, (3, 2, 256, 256)).astype(np.uint8)
    paths = [write_submission(tmp_path / f"{k}.csv", NAMES[:2], labels[k]) for k in range(3)]
    _, values = read_submission(hard_vote(paths, tmp_path / "vote.csv"))
    np.testing.assert_array_equal(values[1].reshape(256, 256), weighted_vote(labels[:, 1]))


def replace_line(path, line_number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def bad_order(tmp_path, paths):
    lines = paths[1].read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    paths[1].write_text("\n".join(lines) + "\n")
    return paths, f"{paths[1]} row 3: image 'c.jpg', but {paths[0]} row 3 has 'b.jpg'"


def other_image(tmp_path, paths):
    text = paths[2].read_text().replace("d.jpg,", "e.jpg,")
    paths[2].write_text(text)
    return paths, f"{paths[2]} row 5: image 'e.jpg', but {paths[0]} row 5 has 'd.jpg'"


def fewer_rows(tmp_path, paths):
    lines = paths[1].read_text().splitlines()
    paths[1].write_text("\n".join(lines[:-1]) + "\n")
    return paths, f"{paths[1]}: has no row 5, but {paths[0]} row 5 has image 'd.jpg'"


def more_rows(tmp_path, paths):
    with open(paths[2], "a") as f:
        f.write("e.jpg," + " ".join(["0"] * 64) + "\n")
    return paths, f"{paths[0]}: has no row 6, but {paths[2]} row 6 has image 'e.jpg'"


def short_row(tmp_path, paths):
    replace_line(paths[1], 4, "c.jpg," + " ".join(["1"] * 60))
    return paths, f"{paths[1]} row 4 (image 'c.jpg'): has 60 values, expected 64"


def out_of_range(tmp_path, paths):
    replace_line(paths[0], 2, "a.jpg," + " ".join(["11"] * 64))
    return paths, f"{paths[0]} row 2 (image 'a.jpg'): value 11 at pixel 0"


def text_value(tmp_path, paths):
    replace_line(paths[2], 3, "b.jpg," + " ".join(["nan"] * 64))
    return paths, f"{paths[2]} row 3 (image 'b.jpg'): non-integer text 'nan'"


@pytest.mark.parametrize("spoil", [bad_order, other_image, fewer_rows, more_rows, short_row,
                                   out_of_range, text_value])
def test_hard_vote_bad_inputs_name_file_and_row_and_write_nothing(tmp_path, spoil):
    paths, _ = make_csvs(tmp_path, 3)
    paths, message = spoil(tmp_path, paths)
    out = tmp_path / "out" / "vote.csv"
    with pytest.raises(SubmissionError) as info:
        hard_vote(paths, out, size=SIZE)
    assert message in str(info.value)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize("count, weights, message", [
    (1, None, "at least 2 submissions, got 1"),
    (3, [1, 2], "2 weights for 3 submissions"),
    (2, [1, float("nan")], "finite"),
])
def test_hard_vote_bad_parameters(tmp_path, count, weights, message):
    paths, _ = make_csvs(tmp_path, count)
    with pytest.raises(ParameterError, match=message):
        hard_vote(paths, tmp_path / "vote.csv", weights, size=SIZE)
    assert not (tmp_path / "vote.csv").exists()


def test_cli_ensemble_hard(tmp_path, capsys):
    paths, labels = make_csvs(tmp_path, 3)
    out = tmp_path / "vote.csv"
    code = main(["ensemble", "--method", "hard", "--out", str(out), "--weights", "1", "1", "3",
                 "--size", "8", "8", *map(str, paths)])
    assert code == 0, capsys.readouterr()
    _, values = read_submission(out, size=SIZE)
    np.testing.assert_array_equal(values[0].reshape(SIZE), labels[2, 0])  # weight 3 wins
    # weights given right before the inputs
    code = main(["ensemble", "--method", "hard", "--out", str(out), "--size", "8", "8",
                 "--weights", "1", "1", "3", *map(str, paths)])
    assert code == 0
    np.testing.assert_array_equal(read_submission(out, size=SIZE)[1], values)


def test_cli_ensemble_errors_exit_2_without_output(tmp_path, capsys):
    paths, _ = make_csvs(tmp_path, 2)
    out = tmp_path / "vote.csv"
    code = main(["ensemble", "--method", "hard", "--out", str(out), "--size", "8", "8",
                 str(paths[0])])
    assert code == 2 and "at least 2 submissions" in capsys.readouterr().err
    code = main(["ensemble", "--method", "hard", "--out", str(out), "--weights", "1",
                 "--size", "8", "8", *map(str, paths)])
    assert code == 2 and "1 weights for 2 submissions" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Soft vote over prediction folders
# ---------------------------------------------------------------------------------------------

CLASSES = ["Background", "Paper", "Metal"]
IMAGES = [{"id": 7, "file_name": "x/7.jpg", "width": 16, "height": 16},
          {"id": 3, "file_name": "x/3.jpg", "width": 16, "height": 16}]


def make_folder(path, probs_by_id: dict, images=IMAGES, classes=CLASSES):
    for image_id, probs in probs_by_id.items():
        save_probs(path, image_id, probs)
    write_prediction_meta(path, images, classes, (4, 4), "test")
    return path


def random_probs(rng, classes=3, size=(4, 4)) -> np.ndarray:
    return rng.integers(0, 256, (classes, *size)).astype(np.uint8)


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(5)
    probs = [{7: random_probs(rng), 3: random_probs(rng)} for _ in range(3)]
    dirs = [make_folder(tmp_path / f"run{k}", probs[k]) for k in range(3)]
    return dirs, probs


def test_soft_vote_writes_the_weighted_mean(tmp_path, folders):
    dirs, probs = folders
    weights = [1, 2, 0.5]
    out = soft_vote(dirs, tmp_path / "ens", weights)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == CLASSES and [i["id"] for i in meta["images"]] == [7, 3]
    assert meta["ensemble"]["weights"] == weights
    for image_id in (7, 3):
        mean = sum(w * probs[k][image_id].astype(float) for k, w in enumerate(weights)) / 3.5
        stored = np.load(out / "probs" / f"{image_id}.npy")
        assert stored.dtype == np.uint8
        np.testing.assert_array_equal(stored, np.rint(mean).astype(np.uint8))


def test_soft_vote_submission_is_the_argmax_of_the_sum(tmp_path, folders):
    dirs, probs = folders
    out = write_ensemble_submission(dirs, tmp_path / "soft.csv", "soft")
    names, values = read_submission(out, num_classes=3, size=(4, 4))
    assert names == ["x/7.jpg", "x/3.jpg"]
    for row, image_id in enumerate((7, 3)):
        total = sum(p[image_id].astype(int) for p in probs)
        np.testing.assert_array_equal(values[row].reshape(4, 4), np.argmax(total, axis=0))


def test_soft_vote_ties_go_to_the_lower_class_and_ignore_input_order(tmp_path):
    a = np.zeros((3, 4, 4), np.uint8)
    b = np.zeros((3, 4, 4), np.uint8)
    a[2], b[1] = 200, 200          # class 1 and class 2 tie everywhere
    a[0, 0, 0] = b[0, 0, 0] = 255  # class 0 wins one pixel
    d1 = make_folder(tmp_path / "a", {7: a, 3: a})
    d2 = make_folder(tmp_path / "b", {7: b, 3: b})
    votes = [label for _, _, label in iter_soft_vote([d1, d2])]
    swapped = [label for _, _, label in iter_soft_vote([d2, d1])]
    np.testing.assert_array_equal(votes, swapped)
    assert votes[0][0, 0] == 0 and (votes[0].ravel()[1:] == 1).all()


def test_cli_ensemble_soft(tmp_path, folders, capsys):
    dirs, _ = folders
    out = tmp_path / "soft.csv"
    code = main(["ensemble", "--method", "soft", "--out", str(out), *map(str, dirs)])
    assert code == 0, capsys.readouterr()
    assert out.read_text().startswith(HEADER + "\nx/7.jpg,")
    assert out.read_bytes() == write_ensemble_submission(dirs, tmp_path / "again.csv", "soft").read_bytes()


def test_soft_vote_checks_the_folders_agree(tmp_path, folders):
    dirs, probs = folders
    rng = np.random.default_rng(6)
    other_classes = make_folder(tmp_path / "classes", probs[0],
                                classes=["Background", "Paper", "Glass"])
    fewer = make_folder(tmp_path / "fewer", {7: probs[0][7]}, images=IMAGES[:1])
    no_probs = make_folder(tmp_path / "noprobs", {7: probs[0][7]})  # meta lists image 3 too
    wrong_shape = make_folder(tmp_path / "shape", {7: random_probs(rng, size=(5, 4)),
                                                   3: random_probs(rng, size=(5, 4))})
    cases = [(other_classes, "classes ['Background', 'Paper', 'Glass'] differ"),
             (fewer, "lacks image ids [3]"),
             (no_probs, "no stored probabilities for image id 3"),
             (wrong_shape, "probabilities of image id 7 are (3, 5, 4)")]
    for bad, message in cases:
        out_csv, out_dir = tmp_path / "out.csv", tmp_path / "out_dir"
        with pytest.raises(SegkitError, match=re.escape(message)) as info:
            write_ensemble_submission([dirs[0], bad], out_csv, "soft")
        assert str(bad) in str(info.value) or str(dirs[0]) in str(info.value)
        with pytest.raises(SegkitError):
            soft_vote([dirs[0], bad], out_dir)
        assert not out_csv.exists() and not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ParameterError, match="at least 2"):
        soft_vote(dirs[:1], tmp_path / "one")
    with pytest.raises(ParameterError, match="2 weights for 3"):
        soft_vote(dirs, tmp_path / "w", [1, 2])


def test_soft_vote_replaces_an_older_folder(tmp_path, folders):
    dirs, _ = folders
    out = tmp_path / "ens"
    soft_vote(dirs, out, [1, 1, 1])
    (out / "stale.txt").write_text("old")
    soft_vote(dirs, out, [3, 1, 1])
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "meta.json").read_text())["ensemble"]["weights"] == [3, 1, 1]


# ---------------------------------------------------------------------------------------------
# Greedy selection
# ---------------------------------------------------------------------------------------------

def one_hot(labels: np.ndarray, classes: int = 3, high: int = 200) -> np.ndarray:
    probs = np.full((classes, *labels.shape), (255 - high) // (classes - 1), np.uint8)
    for c in range(classes):
        probs[c][labels == c] = high
    return probs


@pytest.fixture
def truth():
    left = np.zeros((4, 8), np.uint8)
    left[:, :4] = 1
    left[:, 4:] = 2
    return {7: left, 3: left.copy()}


def test_greedy_picks_the_better_model_and_stops(tmp_path, truth):
    good = {k: one_hot(v) for k, v in truth.items()}
    half = {k: one_hot(np.where(np.arange(8) < 4, v, 0)) for k, v in truth.items()}
    dirs = [make_folder(tmp_path / "half", half), make_folder(tmp_path / "good", good)]
    result = greedy_selection(dirs, truth)
    assert result.single_miou[1] == pytest.approx(1.0)
    assert result.single_miou[0] < 0.7
    assert result.chosen == [1] and result.weights == [0, 1]
    assert result.step_miou == [pytest.approx(1.0)]


def test_greedy_finds_a_complementary_pair(tmp_path, truth):
    """Model A is sure on the left half and unsure on the right, B the opposite, C is wrong:
    A + B is perfect though neither is alone."""
    def unsure(label: np.ndarray, sure_columns: slice) -> np.ndarray:
        probs = np.zeros((3, *label.shape), np.uint8)
        probs[0], probs[1], probs[2] = 120, 60, 60   # elsewhere: background, barely
        probs[:, label == 1] += np.array([0, 40, 0], np.uint8)[:, None]
        probs[:, label == 2] += np.array([0, 0, 40], np.uint8)[:, None]
        sure = np.zeros(label.shape, bool)
        sure[:, sure_columns] = True
        probs[:, sure] = one_hot(label)[:, sure]
        return probs

    a = {k: unsure(v, slice(0, 5)) for k, v in truth.items()}   # a bit more than half
    b = {k: unsure(v, slice(4, 8)) for k, v in truth.items()}
    c = {k: one_hot(np.zeros_like(v)) for k, v in truth.items()}
    dirs = [make_folder(tmp_path / n, p) for n, p in (("c", c), ("a", a), ("b", b))]
    result = greedy_selection(dirs, lambda image: truth[image["id"]], max_models=5)
    assert result.single_miou[1] > result.single_miou[2] > result.single_miou[0]
    assert result.chosen == [1, 2]
    assert result.step_miou[0] == pytest.approx(result.single_miou[1])
    assert result.step_miou[1] == pytest.approx(1.0)
    assert result.weights == [0, 1, 1]
    assert [row["added"] for row in result.table()] == [str(dirs[1]), str(dirs[2])]


def test_greedy_respects_max_models_and_ignore_index(tmp_path, truth):
    rng = np.random.default_rng(7)
    dirs = [make_folder(tmp_path / f"m{k}", {7: random_probs(rng, size=(4, 8)),
                                             3: random_probs(rng, size=(4, 8))})
            for k in range(3)]
    ignored = {k: np.where(np.arange(8) < 2, 255, v).astype(np.uint8) for k, v in truth.items()}
    result = greedy_selection(dirs, ignored, max_models=2)
    assert 1 <= len(result.chosen) <= 2
    assert result.step_miou == sorted(result.step_miou)  # each step improves


def test_greedy_checks_the_truth(tmp_path, truth):
    dirs = [make_folder(tmp_path / "m", {k: one_hot(v) for k, v in truth.items()})]
    with pytest.raises(ParameterError, match="no ground-truth label map for image id 3"):
        greedy_selection(dirs, {7: truth[7]})
    with pytest.raises(ParameterError, match=r"image id 7 is \(4, 4\)"):
        greedy_selection(dirs, {7: truth[7][:, :4], 3: truth[3]})
    with pytest.raises(ParameterError, match="outside 0..2 and 255"):
        greedy_selection(dirs, {7: truth[7] + 1, 3: truth[3]})
    with pytest.raises(ParameterError, match="max_models"):
        greedy_selection(dirs, truth, max_models=0)
