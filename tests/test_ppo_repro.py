"""A seeded run is bit-reproducible at a fixed thread count: weights and metrics (timings aside)."""

import hashlib

import pandas as pd

from rlhf_interp.ppo import run_training


def test_two_runs_give_identical_weights_and_metrics(tmp_path):
    opts = {"steps": 3, "batch_size": 8, "minibatches": 2, "ppo_epochs": 2, "response_length": 10,
            "eval_samples_per_prompt": 2, "log_every": 3, "save_every": 10}
    digests, tables = [], []
    for name in ("a", "b"):
        run_training(overrides={**opts, "out": str(tmp_path / name)})
        digests.append(hashlib.sha256((tmp_path / name / "tuned" / "model.safetensors").read_bytes()).hexdigest())
        m = pd.read_csv(tmp_path / name / "metrics.csv").drop(columns=["episodes_per_s", "time_s"])
        tables.append((m.to_csv(index=False) + (tmp_path / name / "eval.csv").read_text()).encode())
    assert digests[0] == digests[1]
    assert hashlib.sha256(tables[0]).hexdigest() == hashlib.sha256(tables[1]).hexdigest()
