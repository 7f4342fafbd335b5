"""segkit.submission.files: the CSV written byte-exactly, read back, and every bad input named."""

from __future__ import annotations

import numpy as np
import pytest

from segkit.core.errors import ParameterError, SubmissionError
from segkit.flow.cli import main
from segkit.submission.codec import HEADER
from segkit.submission.files import submission_writer, validate_submission, write_submission
from segkit.submission.reader import iter_submission, read_submission
from tests.conftest import write_json

SIZE = (8, 8)
NAMES = ["batch_01_vt/0001.jpg", "batch_01_vt/0002.jpg", "batch_03/0003.jpg"]


def plain_row(name: str, label_map: np.ndarray) -> str:
    """The row the way the teams wrote it: str() of each value, joined."""
    return name + "," + " ".join(str(int(v)) for v in label_map.ravel())


def random_maps(count: int, size=SIZE, num_classes=11, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, num_classes, size).astype(np.uint8) for _ in range(count)]


def write_text(path, rows: list[str], header: str = HEADER) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


@pytest.fixture
def test_json(tmp_path):
    images = [{"id": i + 1, "file_name": n, "width": 16, "height": 16}
              for i, n in enumerate(NAMES)]
    return write_json(tmp_path / "test.json", {"images": images, "categories": []})


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# Writing and reading back
# ---------------------------------------------------------------------------------------------

def test_rows_match_the_plain_way_byte_for_byte(tmp_path):
    maps = random_maps(3)
    maps[1][:] = np.minimum(maps[1], 9)  # one row on the single-digit fast path
    path = write_submission(tmp_path / "sub.csv", NAMES, maps, size=SIZE)
    expected = "\n".join([HEADER] + [plain_row(n, m) for n, m in zip(NAMES, maps, strict=True)])
    assert path.read_text() == expected + "\n"


def test_full_size_roundtrip_is_exact_and_deterministic(tmp_path):
    maps = random_maps(2, size=(256, 256))
    maps[0] = np.minimum(maps[0], 9)
    maps[1][0, 0], maps[1][-1, -1] = 10, 10  # two-digit values at both ends of the row
    first = write_submission(tmp_path / "a.csv", NAMES[:2], maps)
    second = write_submission(tmp_path / "b.csv", NAMES[:2], iter(maps))
    assert first.read_bytes() == second.read_bytes()
    lines = first.read_text().splitlines()
    assert lines[1] == plain_row(NAMES[0], maps[0])
    assert lines[2] == plain_row(NAMES[1], maps[1])
    assert len(lines[2].split(",")[1].split(" ")) == 65536
    names, values = read_submission(first)
    assert names == NAMES[:2]
    assert values.dtype == np.uint8 and values.shape == (2, 65536)
    np.testing.assert_array_equal(values, np.stack([m.ravel() for m in maps]))


@pytest.mark.parametrize("num_classes", [2, 11, 100, 255])
def test_roundtrip_every_value_width(tmp_path, num_classes):
    maps = random_maps(3, num_classes=num_classes, seed=num_classes)
    path = write_submission(tmp_path / "sub.csv", NAMES, maps, num_classes, SIZE)
    assert path.read_text().splitlines()[3] == plain_row(NAMES[2], maps[2])
    names, values = read_submission(path, num_classes, SIZE)
    np.testing.assert_array_equal(values, np.stack([m.ravel() for m in maps]))


def test_iter_submission_streams_rows_with_spreadsheet_numbers(tmp_path):
    maps = random_maps(3)
    path = write_submission(tmp_path / "sub.csv", NAMES, maps, size=SIZE)
    rows = list(iter_submission(path, size=SIZE))
    assert [(r, n) for r, n, _ in rows] == [(2, NAMES[0]), (3, NAMES[1]), (4, NAMES[2])]
    np.testing.assert_array_equal(rows[1][2].reshape(SIZE), maps[1])


def test_reader_accepts_crlf_bom_and_a_quoted_image_id(tmp_path):
    values = " ".join(["3"] * 64)
    path = tmp_path / "sub.csv"
    path.write_bytes(("\ufeff" + HEADER + "\r\n" + f'"{NAMES[0]}",{values}\r\n').encode())
    names, array = read_submission(path, size=SIZE)
    assert names == [NAMES[0]] and (array == 3).all()


def test_submission_writer_streams_rows(tmp_path):
    with submission_writer(tmp_path / "sub.csv", size=(2, 2)) as writer:
        writer.write_row("a.jpg", np.array([[1, 2], [3, 10]]))
        assert not (tmp_path / "sub.csv").exists()  # appears only when the block ends
    assert (tmp_path / "sub.csv").read_text() == f"{HEADER}\na.jpg,1 2 3 10\n"


# ---------------------------------------------------------------------------------------------
# Bad input to the writer: one SubmissionError naming file and row, no file left behind
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("names, maps, message", [
    (NAMES, random_maps(2) + [np.zeros((8, 7), np.uint8)], "row 4 (image 'batch_03/0003.jpg')"
     ": label map has shape (8, 7), expected (8, 8)"),
    (NAMES, random_maps(2) + [np.full(SIZE, 11, np.uint8)], "row 4 (image 'batch_03/0003.jpg')"
     ": label map holds 11, outside 0..10"),
    (NAMES, [np.full(SIZE, -1)] + random_maps(2), "row 2 (image 'batch_01_vt/0001.jpg'): "
     "label map holds -1"),
    (NAMES, [np.zeros(SIZE, np.float32)] * 3, "row 2 (image 'batch_01_vt/0001.jpg'): label map "
     "must hold integers, got float32"),
    (NAMES, random_maps(2), "3 file names but only 2 label maps"),
    (NAMES[:2], random_maps(3), "more label maps than the 2 file names"),
    (["a.jpg", "a.jpg"], random_maps(2), "row 3 (image 'a.jpg'): image_id appears twice"),
    (["a,b.jpg"], random_maps(1), "row 2 (image 'a,b.jpg'): image_id must not contain commas"),
])
def test_write_rejects_bad_input_and_leaves_no_file(tmp_path, names, maps, message):
    path = tmp_path / "sub.csv"
    with pytest.raises(SubmissionError) as info:
        write_submission(path, names, iter(maps), size=SIZE)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    assert leftovers(tmp_path) == []


def test_write_keeps_an_older_file_when_it_fails(tmp_path):
    path = write_submission(tmp_path / "sub.csv", NAMES, random_maps(3), size=SIZE)
    before = path.read_bytes()
    with pytest.raises(SubmissionError):
        write_submission(path, NAMES, random_maps(2), size=SIZE)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == ["sub.csv"]


def test_bad_parameters_are_parameter_errors(tmp_path):
    with pytest.raises(ParameterError, match="num_classes"):
        write_submission(tmp_path / "s.csv", NAMES, random_maps(3), num_classes=256)
    with pytest.raises(ParameterError, match="size"):
        read_submission(tmp_path / "s.csv", size=(0, 8))


# ---------------------------------------------------------------------------------------------
# Bad input to the reader
# ---------------------------------------------------------------------------------------------

GOOD = " ".join(["1"] * 64)


@pytest.mark.parametrize("header, rows, message", [
    ("image,Prediction", [f"a.jpg,{GOOD}"], "row 1: header must be 'image_id,PredictionString'"),
    (HEADER, [f"a.jpg,{GOOD}", "b.jpg," + " ".join(["1"] * 63)],
     "row 3 (image 'b.jpg'): has 63 values, expected 64 (8x8)"),
    (HEADER, ["a.jpg," + " ".join(["1"] * 63 + ["11"])],
     "row 2 (image 'a.jpg'): value 11 at pixel 63 (y=7, x=7) is outside 0..10"),
    (HEADER, ["a.jpg," + " ".join(["1"] * 10 + ["x"] + ["1"] * 53)],
     "row 2 (image 'a.jpg'): non-integer text 'x' at pixel 10 (y=1, x=2)"),
    (HEADER, ["a.jpg," + " ".join(["1"] * 5 + ["2.0"] + ["1"] * 58)],
     "non-integer text '2.0' at pixel 5"),
    (HEADER, ["a.jpg," + " ".join(["1"] * 5 + ["-1"] + ["1"] * 58)],
     "value -1 at pixel 5 (y=0, x=5) is negative: outside 0..10"),
    (HEADER, ["a.jpg," + " ".join(["1"] * 5 + ["0001"] + ["1"] * 58)],
     "a value at pixel 5 (y=0, x=5) has more than 3 digits"),
    (HEADER, ["a.jpg,1  " + " ".join(["1"] * 63)], "two spaces before pixel 1"),
    (HEADER, [f"a.jpg,{GOOD} "], "ends with a space"),
    (HEADER, [f"a.jpg,{GOOD}", "", f"c.jpg,{GOOD}"], "row 3: empty row"),
    (HEADER, [f"a.jpg {GOOD}"], "row 2: no comma between image_id and PredictionString"),
    (HEADER, [f"a.jpg,{GOOD},extra"], "non-integer text"),
    (HEADER, ["a.jpg,"], "row 2 (image 'a.jpg'): PredictionString is empty"),
])
def test_read_names_file_and_row_of_the_first_problem(tmp_path, header, rows, message):
    path = tmp_path / "sub.csv"
    write_text(path, rows, header)
    with pytest.raises(SubmissionError) as info:
        read_submission(path, size=SIZE)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_read_missing_or_empty_file(tmp_path):
    with pytest.raises(SubmissionError, match="file not found"):
        read_submission(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(SubmissionError, match="empty file"):
        read_submission(tmp_path / "empty.csv")


# ---------------------------------------------------------------------------------------------
# Validation against test.json
# ---------------------------------------------------------------------------------------------

def rows_for(names: list[str], value: str = "1") -> list[str]:
    return [f"{n}," + " ".join([value] * 64) for n in names]


def test_a_valid_submission_has_no_problems(tmp_path, test_json):
    path = write_submission(tmp_path / "sub.csv", NAMES, random_maps(3), size=SIZE)
    assert validate_submission(path, test_json, size=SIZE) == []


@pytest.mark.parametrize("names, expected", [
    (NAMES[:2], "{path}: missing image 'batch_03/0003.jpg' (image 3 of {test}, expected on row 4)"),
    (NAMES + ["other.jpg"], "{path} row 5 (image 'other.jpg'): extra image, not in {test}"),
    (NAMES + [NAMES[0]],
     "{path} row 5 (image 'batch_01_vt/0001.jpg'): duplicate image_id (first on row 2)"),
    # two rows swapped: one of them is reported, not both
    ([NAMES[1], NAMES[0], NAMES[2]],
     "{path} row 2 (image 'batch_01_vt/0002.jpg'): wrong order: it is image 2 of {test}, so row 3"),
    # the last image moved to the top: only that row is reported, not every row after it
    ([NAMES[2], NAMES[0], NAMES[1]],
     "{path} row 2 (image 'batch_03/0003.jpg'): wrong order: it is image 3 of {test}, so row 4"),
])
def test_validation_reports_image_set_and_order_problems(tmp_path, test_json, names, expected):
    path = tmp_path / "sub.csv"
    write_text(path, rows_for(names))
    problems = validate_submission(path, test_json, size=SIZE)
    assert problems == [expected.format(path=path, test=test_json)]


def test_validation_lists_every_problem_at_once(tmp_path, test_json):
    path = tmp_path / "sub.csv"
    rows = [f"{NAMES[0]}," + " ".join(["1"] * 63),           # too short
            f"{NAMES[2]}," + " ".join(["12"] * 64),          # out of range, and out of order
            f"{NAMES[1]}," + " ".join(["a"] * 64),           # non-integer text
            "extra.jpg," + " ".join(["1"] * 64)]             # extra image
    write_text(path, rows, header="id,pred")
    problems = validate_submission(path, test_json, size=SIZE)
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert all(p.startswith(str(path)) for p in problems)
    for expected in ["row 1: header must be", "row 2 (image 'batch_01_vt/0001.jpg'): has 63 values",
                     "row 3 (image 'batch_03/0003.jpg'): value 12 at pixel 0",
                     "row 4 (image 'batch_01_vt/0002.jpg'): non-integer text 'a'",
                     "row 5 (image 'extra.jpg'): extra image",
                     "row 3 (image 'batch_03/0003.jpg'): wrong order"]:
        assert expected in text


def test_validation_checks_a_data_row_in_place_of_the_header(tmp_path, test_json):
    path = tmp_path / "sub.csv"
    path.write_text("\n".join(rows_for(NAMES)) + "\n")
    problems = validate_submission(path, test_json, size=SIZE)
    assert len(problems) == 1 and "row 1: header must be" in problems[0]


def test_validation_respects_num_classes(tmp_path, test_json):
    path = tmp_path / "sub.csv"
    write_text(path, rows_for(NAMES, value="5"))
    assert validate_submission(path, test_json, num_classes=6, size=SIZE) == []
    problems = validate_submission(path, test_json, num_classes=5, size=SIZE)
    assert len(problems) == 3 and all("outside 0..4" in p for p in problems)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_check_submission_ok(tmp_path, test_json, capsys):
    path = write_submission(tmp_path / "sub.csv", NAMES, random_maps(3), size=SIZE)
    code = main(["check-submission", str(path), "--test-json", str(test_json), "--size", "8", "8"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.strip().splitlines() == [f"{path}: OK, matches {test_json}"]


def test_cli_check_submission_prints_every_problem(tmp_path, test_json, capsys):
    path = tmp_path / "sub.csv"
    write_text(path, rows_for([NAMES[1], NAMES[0], "x.jpg"], value="7"))
    code = main(["check-submission", str(path), "--test-json", str(test_json),
                 "--num-classes", "5", "--size", "8", "8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 2
    errors = [line for line in lines if line.startswith("error: ")]
    # 3 rows out of range, x.jpg extra, one row out of order, one image missing
    assert len(errors) == 6, lines
    assert lines[-1] == f"{path}: 6 problems"


def test_cli_check_submission_missing_file_exits_2(tmp_path, test_json, capsys):
    code = main(["check-submission", str(tmp_path / "none.csv"), "--test-json", str(test_json)])
    assert code == 2
    assert "none.csv: file not found" in capsys.readouterr().err


@pytest.mark.parametrize("share", [0.0, 0.02, 0.5, 1.0])
def test_reading_any_mix_of_value_widths(tmp_path, share):
    """Rows with no, few, many and only multi-digit values (each read a different way)."""
    rng = np.random.default_rng(int(share * 100))
    values = rng.integers(0, 10, (3, 64))
    wide = rng.random((3, 64)) < share
    values[wide] = rng.choice([10, 99, 100, 254], int(wide.sum()))
    path = tmp_path / "sub.csv"
    write_text(path, [plain_row(n, v) for n, v in zip(NAMES, values, strict=True)])
    np.testing.assert_array_equal(read_submission(path, 255, SIZE)[1], values)
    if (values == 254).any():
        with pytest.raises(SubmissionError, match="value 254 at pixel"):
            read_submission(path, 200, SIZE)


@pytest.mark.parametrize("share", [0.02, 1.0])
def test_four_digit_values_are_caught_among_few_or_many_long_ones(tmp_path, share):
    rng = np.random.default_rng(3)
    tokens = [str(v) for v in rng.integers(0, 10, 64)]
    for k in np.flatnonzero(rng.random(64) < share):
        tokens[k] = "100"
    tokens[40] = "1000"
    path = tmp_path / "sub.csv"
    write_text(path, [f"a.jpg,{' '.join(tokens)}"])
    with pytest.raises(SubmissionError, match=r"a value at pixel 40 \(y=5, x=0\) has more than 3"):
        read_submission(path, 255, SIZE)


def test_cli_check_submission_counts_classes_from_the_test_json(tmp_path, capsys):
    images = [{"id": i + 1, "file_name": n, "width": 16, "height": 16}
              for i, n in enumerate(NAMES)]
    categories = [{"id": i, "name": name} for i, name in enumerate(["Sky", "Road", "Car"], 1)]
    test_file = write_json(tmp_path / "test.json", {"images": images, "categories": categories})
    path = tmp_path / "sub.csv"
    write_text(path, rows_for(NAMES, value="3"))  # Car: background + 3 categories
    assert main(["check-submission", str(path), "--test-json", str(test_file),
                 "--size", "8", "8"]) == 0
    write_text(path, rows_for(NAMES, value="4"))
    assert main(["check-submission", str(path), "--test-json", str(test_file),
                 "--size", "8", "8"]) == 2
    assert "outside 0..3" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Bad input (issue 15): files that are not what they claim, refused with one clear message
# ---------------------------------------------------------------------------------------------

def test_no_final_newline_reads_the_same(tmp_path, test_json):
    maps = random_maps(3)
    full = write_submission(tmp_path / "full.csv", NAMES, maps, size=SIZE)
    bare = tmp_path / "bare.csv"
    bare.write_bytes(full.read_bytes()[:-1])
    names, values = read_submission(bare, size=SIZE)
    expected_names, expected = read_submission(full, size=SIZE)
    assert names == expected_names and np.array_equal(values, expected)
    assert validate_submission(bare, test_json, size=SIZE) == []
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(full.read_bytes().replace(b"\n", b"\r\n")[:-2])
    assert np.array_equal(read_submission(crlf, size=SIZE)[1], expected)


def test_hard_vote_accepts_an_input_without_final_newline(tmp_path):
    from segkit.submission.vote import hard_vote

    maps = random_maps(3)
    a = write_submission(tmp_path / "a.csv", NAMES, maps, size=SIZE)
    b = tmp_path / "b.csv"
    b.write_bytes(a.read_bytes()[:-1])
    out = hard_vote([a, b], tmp_path / "vote.csv", size=SIZE)
    assert out.read_bytes() == a.read_bytes()


@pytest.mark.parametrize("cut", [30, 100, 171, -50, -3])
def test_a_truncated_file_is_refused_with_a_hint(tmp_path, test_json, cut):
    """(A cut that only drops the final line break, or the last digit of a final "10", leaves
    a valid file: nothing can tell it from one written so.)"""
    full = write_submission(tmp_path / "full.csv", NAMES, random_maps(3), size=SIZE).read_bytes()
    path = tmp_path / "cut.csv"
    path.write_bytes(full[:cut])
    problems = validate_submission(path, test_json, size=SIZE)
    assert problems and all(p.startswith(str(path)) for p in problems)
    assert len(problems) <= 4
    if full[:cut][-1:] != b"\n" and b"\n" in full[:cut]:
        assert "truncated?" in problems[0] or "missing image" in problems[0]
    with pytest.raises(SubmissionError, match=str(path)):
        read_submission(path, size=SIZE)


@pytest.mark.parametrize("kind, message", [
    ("gzip", "gzip-compressed, not a CSV text file"),
    ("zip", "a zip archive, not a CSV text file"),
    ("utf16", "binary data (a NUL byte at offset 1)"),
    ("random", "binary data"),
])
def test_compressed_or_binary_files_are_refused(tmp_path, test_json, kind, message):
    import gzip
    import io
    import zipfile

    text = write_submission(tmp_path / "s.csv", NAMES, random_maps(3), size=SIZE).read_bytes()
    if kind == "gzip":
        data = gzip.compress(text)
    elif kind == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            z.writestr("s.csv", text)
        data = buffer.getvalue()
    elif kind == "utf16":
        data = text.decode().encode("utf-16-le")
    else:
        data = np.random.default_rng(0).integers(0, 256, 200_000, np.uint8).tobytes()
        data = data.replace(b"\n", b"") + b"\0"
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    with pytest.raises(SubmissionError, match=f"{path}: {message}".replace("(", r"\(")
                       .replace(")", r"\)")):
        validate_submission(path, test_json, size=SIZE)
    with pytest.raises(SubmissionError, match=str(path)):
        read_submission(path, size=SIZE)


def test_negative_values_are_out_of_range_in_validation(tmp_path, test_json):
    path = tmp_path / "sub.csv"
    rows = rows_for(NAMES)
    rows[1] = f"{NAMES[1]}," + " ".join(["1"] * 7 + ["-1"] + ["1"] * 56)
    write_text(path, rows)
    assert validate_submission(path, test_json, size=SIZE) == [
        f"{path} row 3 (image '{NAMES[1]}'): value -1 at pixel 7 (y=0, x=7) is negative: "
        "outside 0..10"]


def test_a_line_far_too_long_stops_the_reader(tmp_path, test_json):
    path = tmp_path / "sub.csv"
    path.write_bytes((HEADER + "\n").encode() + b"1 " * 200_000)
    problems = validate_submission(path, test_json, size=SIZE)
    assert problems[0] == (f"{path} row 2: more than {4 * 64 + 65536} bytes without a line "
                           "break: not a submission row")
    with pytest.raises(SubmissionError, match="without a line break"):
        read_submission(path, size=SIZE)


def test_problem_list_is_bounded(tmp_path, test_json):
    path = tmp_path / "sub.csv"
    write_text(path, ["x"] * 5000)
    problems = validate_submission(path, test_json, size=SIZE)
    assert len(problems) == 1001 and problems[-1] == f"{path}: stopped after 1000 problems"


def test_quoted_image_id_with_a_full_size_row(tmp_path):
    """A quoted image_id no longer goes through the csv module (its 128 KB field limit)."""
    label = np.full((256, 256), 10, np.uint8)
    path = write_submission(tmp_path / "s.csv", ["a.jpg"], [label])
    text = path.read_bytes().replace(b"\na.jpg,", b'\n"a.jpg",')
    path.write_bytes(text)
    names, values = read_submission(path)
    assert names == ["a.jpg"] and (values == 10).all()
    path.write_bytes(text.replace(b'"a.jpg",', b'"a.jpg,'))
    with pytest.raises(SubmissionError, match="row 2: a quoted image_id must be closed"):
        read_submission(path)
