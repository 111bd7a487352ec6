"""Tables round-trip through CSV exactly, whatever text a tokenizer produces (GPT-2's vocabulary has tokens with a
bare \\r, NUL, quotes...): the writer quotes every string, the reader keeps "nan"/"NA" tokens as strings."""

import json

import numpy as np
import pandas as pd

from rlhf_interp.analysis.summary import write_outputs
from rlhf_interp.io import read_table, table_csv, write_table
from rlhf_interp.report.render import load_tables

HOSTILE = ["a\rb", "\r", "c\nd", "\r\n", "x\r", 'say "hi"', '"', "g,h", ",", "i\x00j", "\x00", "\t", " lead",
           "trail ", "#comment", "nan", "NA", "null", "None", "N/A", "-", "1e5", "'", "\\", "ü\u2028é\x85", "\ufeffbom",
           "\x1b[31m", "</td><script>", "é" * 3]


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = len(HOSTILE)
    kl = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
    kl[3] = np.nan
    kl[4] = np.inf
    return pd.DataFrame({"sample": np.arange(n) % 3, "pos": np.arange(n), "token": HOSTILE, "kl": kl,
                         "flag": np.arange(n) % 2 == 0, "other": [f"t{i}" for i in range(n)]})


def test_hostile_tokens_round_trip_exactly(tmp_path):
    df = _frame()
    write_table(tmp_path / "t.csv", df)
    back = read_table(tmp_path / "t.csv")
    assert back["token"].tolist() == HOSTILE
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["kl"].tolist()[5:] == df["kl"].tolist()[5:]  # bit for bit, not approximately
    assert back["sample"].dtype.kind == "i" and back["flag"].dtype == bool
    # plain pandas.read_csv with its defaults: same rows and columns, numbers exact, only NA-like words become NaN
    plain = pd.read_csv(tmp_path / "t.csv")
    assert plain.shape == df.shape and plain["pos"].tolist() == df["pos"].tolist()
    assert plain["other"].tolist() == df["other"].tolist()
    na_like = {"nan", "NA", "null", "None", "N/A", "-1.#IND"}
    assert [t for t, p in zip(HOSTILE, plain["token"], strict=True) if p != t] == [
        t for t in HOSTILE if t in na_like]


def test_lone_surrogates_and_empty_strings(tmp_path):
    df = pd.DataFrame({"token": ["k\ud800l", "\udfff", "\ud83d\ude00", ""], "v": [1.5, 2.5, 3.5, 4.5]}, dtype=object)
    df["v"] = df["v"].astype(float)
    text = table_csv(df)
    text.encode("utf-8")  # valid UTF-8: a lone surrogate is not encodable, it becomes U+FFFD
    back = read_table(text.encode("utf-8"))
    assert back["token"].tolist()[:3] == ["k\ufffdl", "\ufffd", "😀"]
    assert pd.isna(back["token"][3])  # CSV has one empty value: an empty string reads back as missing
    assert back["v"].tolist() == [1.5, 2.5, 3.5, 4.5]


def test_compare_outputs_and_report_reader_round_trip(tmp_path):
    kl = pd.DataFrame({"sample": [0] * len(HOSTILE), "pos": range(len(HOSTILE)), "token": HOSTILE,
                       "kl": np.linspace(0, 1, len(HOSTILE))})
    beh = pd.DataFrame({"model": ["base", "tuned"], "prompt": ["p\r1", "p\r1"], "response": ["a\rb\u2028c", "nan"],
                        "reward": [0.1, 0.2]})
    write_outputs(tmp_path, {"token_kl": kl, "behaviour": beh}, {"metric": {}})
    tables = load_tables(tmp_path)
    pd.testing.assert_frame_equal(tables["token_kl"], kl, check_dtype=False)
    pd.testing.assert_frame_equal(tables["behaviour"], beh, check_dtype=False)
    lines = (tmp_path / "samples.jsonl").read_text(encoding="utf-8").split("\n")
    assert [json.loads(line)["response"] for line in lines if line] == ["a\rb\u2028c", "nan"]
