"""Bad input to `ganaug evaluate`: one clear line on stderr and exit status 2, nothing written."""

from __future__ import annotations

import pytest

from ganaug.cli import main


def run(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(["evaluate", *argv])
    except SystemExit as exit_info:  # a usage mistake: argparse's one line and exit status 2
        code = exit_info.code
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ganaug evaluate: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_model(capsys, tmp_path):
    code, err = run(capsys, "metrics", "--model", str(tmp_path / "nope.onnx"), "--data", "digits",
                    "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "nope.onnx", "does not exist")


def test_unknown_data_source_for_the_study(capsys, tmp_path):
    code, err = run(capsys, "study", "--out", str(tmp_path / "out"), "--data", "no_such_dataset", "--k", "5")
    assert_one_line_error(code, err, "no_such_dataset")


def test_unknown_data_source_for_metrics(capsys, tmp_path):
    code, err = run(capsys, "metrics", "--model", str(tmp_path / "m.onnx"), "--data", "no_such_dataset",
                    "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "no_such_dataset")


@pytest.mark.parametrize("k, fragment", [
    ("5,x", "'x' is not a whole number or 'all'"),
    ("0", "must be positive"),
    ("5,5", "distinct"),
    ("", "'' is not a whole number"),
])
def test_bad_k_list(capsys, tmp_path, k, fragment):
    code, err = run(capsys, "study", "--out", str(tmp_path / "out"), "--k", k)
    assert_one_line_error(code, err, "--k", fragment)
    assert not (tmp_path / "out").exists()


def test_unwritable_out(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(capsys, "study", "--out", str(blocker), "--k", "5")
    assert_one_line_error(code, err, "--out", "not a directory")
    code, err = run(capsys, "study", "--out", str(blocker / "sub"), "--k", "5")
    assert_one_line_error(code, err, "--out", "not a writable directory")
    code, err = run(capsys, "metrics", "--model", "m.onnx", "--data", "digits", "--out", str(blocker))
    assert_one_line_error(code, err, "--out")


@pytest.mark.parametrize("argv, fragment", [
    ((), "required"),
    (("nonsense",), "invalid choice"),
    (("study",), "--out"),
    (("study", "--out", "x", "--seeds", "0"), "must be positive"),
    (("study", "--out", "x", "--synthetic-fraction", "2"), "not between 0 and 1"),
    (("study", "--out", "x", "train.no_such_key=1"), "unknown config key 'train.no_such_key'"),
    (("metrics", "--data", "digits", "--out", "x"), "--model"),
])
def test_bad_arguments(capsys, tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, *argv)
    assert_one_line_error(code, err, fragment)


def test_evaluate_help_names_both_evaluations(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "ganaug evaluate {metrics,study}" in text and "ganaug evaluate study" in text
    assert "Each has its own --help" in text
