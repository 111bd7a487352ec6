"""What a new user reads: help texts, error hints, the summary lines, a failing analysis, first-use progress."""

import json
import sys

import pytest
from helpers import assert_one_line_error, plant_head, run_cli

from rlhf_interp.analysis import ANALYSES
from rlhf_interp.models import EMBEDDED_DIR
from rlhf_interp.prompts import EMBEDDED_PROMPTS
from rlhf_interp.report.numbers import pct, sig


def test_help_texts_are_plain_and_complete():
    train = run_cli("train", "--help")
    assert train.returncode == 0, train.stderr
    assert "(flat or a [train] table)" in train.stdout  # no markup eats the brackets
    assert "<bool>" not in train.stdout and "--resume " in train.stdout
    assert "train-keys" in train.stdout
    compare = run_cli("compare", "--help", env={"COLUMNS": "200"})
    assert "compare [OPTIONS] BASE [TUNED]" in compare.stdout and "{" not in compare.stdout.splitlines()[0]
    flat = " ".join(compare.stdout.split())
    for name in ANALYSES:  # --analyses lists every registered analysis
        assert name in flat, name
    assert "DIRECTORY" in run_cli("report", "--help").stdout.splitlines()[0]


def test_unknown_key_points_to_train_keys_with_a_suggestion():
    proc = run_cli("train", "--kl-coeff", "0.1")
    assert_one_line_error(proc, "unknown config key 'kl_coeff'", "did you mean --kl-coef", "rlhf-interp train-keys")
    assert "train --help" not in proc.stderr


def test_numbers_keep_significant_digits():
    assert pct(0.0012) == "+0.12%" and pct(0.5) == "+50%" and pct(-0.0) == "0%"
    assert sig(0.00123) == "+0.0012" and sig(-2.5, 3) == "-2.50" and sig(1e-7) == "+1.0e-07"
    assert sig(float("nan")) == "nan"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return plant_head(EMBEDDED_DIR, tmp_path_factory.mktemp("cli") / "planted", 2, 1)


def test_a_failing_analysis_is_an_error_line_and_the_others_still_run(planted, tmp_path, monkeypatch, capsys):
    from rlhf_interp.cli import app as cli

    def boom(pair, ctx):
        raise KeyError("hook_pos_embed")

    monkeypatch.setitem(ANALYSES, "boom", boom)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(list(EMBEDDED_PROMPTS)[:4]) + "\n")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["rlhf-interp", "compare", "embedded", str(planted), "--prompts", str(prompts),
                                      "--analyses", "logit_diff,boom,patching", "--out", str(out)])
    monkeypatch.setitem(cli._state, "debug", False)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    assert exc.value.code == 1
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: analysis boom failed: KeyError: 'hook_pos_embed' at {__file__.split('/')[-1]}:"
                      f"{boom.__code__.co_firstlineno + 1} (the others ran; rerun with --debug for the traceback)"]
    assert "Traceback" not in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == {"boom": errors[0].split("failed: ")[1].split(" (the others")[0]}
    assert (out / "tables" / "patching_heads.csv").is_file()  # the analysis after the failing one ran
    assert "top heads by patching" in captured.out and "%" in captured.out
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Analyses that failed" in html and "hook_pos_embed" in html


def test_imdb_first_use_shows_progress_and_says_where_it_is_cached(tmp_path, monkeypatch, capsys):
    from rlhf_interp.rewards import imdb

    rows = [(f"a great wonderful film {i}", 1, "imdb") for i in range(60)]
    rows += [(f"an awful boring film {i}", 0, "imdb") for i in range(60)]
    monkeypatch.setattr(imdb, "load_dataset", lambda: list(rows))
    monkeypatch.setenv("RLHF_INTERP_QUIET", "0")
    imdb.build(tmp_path / "clf", epochs=1)
    err = capsys.readouterr().err
    assert "training its classifier" in err and "first use" in err
    flat = "".join(err.split())  # rich wraps long lines at the terminal width
    assert "cachedat" + "".join(str(tmp_path / "clf").split()) in flat and "lateruns" not in flat
