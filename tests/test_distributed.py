"""Multi-process training: the cross-rank statistics against one-process computations, and a 2-process gloo run
(ranks identical after every update, one copy of each output, kill + resume equals uninterrupted)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from helpers import run_cli
from safetensors.torch import load_file

from rlhf_interp.errors import UserError
from rlhf_interp.ppo import core
from rlhf_interp.ppo.distributed import Dist, check_batch, rank_seed

TIMING = ["episodes_per_s", "time_s"]
ARGS = ["--steps", "4", "--batch-size", "8", "--minibatches", "2", "--ppo-epochs", "2",
         "--response-length", "10", "--eval-samples-per-prompt", "1", "--log-every", "2", "--save-every", "2",
         "--whiten-scores", "--adaptive-kl"]
TRAIN = ["train", "--nproc", "2", *ARGS]
OUTPUTS = {"base", "checkpoint", "config.toml", "curves.png", "eval.csv", "figures", "metrics.csv", "report.html",
           "samples.jsonl", "summary.json", "tuned", "prompts_train.txt", "prompts_eval.txt"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats_worker(rank: int, port: int, x: torch.Tensor, mask: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        dist = Dist(rank=rank, world=2)
        half = slice(rank * 3, rank * 3 + 3)  # rank r holds rows 3r .. 3r+2
        mean, var = dist.masked_moments(x[half], mask[half])
        whitened = dist.masked_whiten(x[half], mask[half])
        gathered = dist.gather_rows(x[half])
        ev = dist.explained_variance(x[half] * 0.5, x[half], mask[half])
        torch.save({"mean": mean, "var": var, "whitened": whitened, "gathered": gathered, "ev": ev,
                    "any": dist.any(rank == 1, torch.device("cpu")), "stats": dist.mean_of_stats(
                        {"a": float(rank), "b": 2.0}, torch.device("cpu"))}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_cross_rank_statistics_equal_one_process_statistics(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    mp.spawn(_stats_worker, args=(_free_port(), x, mask, str(tmp_path)), nprocs=2, join=True)
    whole_whitened = core.masked_whiten(x, mask)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["mean"], core.masked_mean(x, mask), atol=1e-6)
        assert torch.allclose(got["var"], core.masked_var(x, mask), atol=1e-6)
        assert torch.allclose(got["whitened"], whole_whitened[rank * 3 : rank * 3 + 3], atol=1e-5)
        assert torch.equal(got["gathered"], x)
        assert got["ev"] == pytest.approx(core.explained_variance(x * 0.5, x, mask), abs=1e-5)
        assert got["any"] is True
        assert got["stats"] == {"a": 0.5, "b": 2.0}


def test_one_process_helpers_are_the_identity():
    dist = Dist()
    x, mask = torch.randn(3, 4), torch.ones(3, 4, dtype=torch.bool)
    assert torch.equal(dist.masked_whiten(x, mask), core.masked_whiten(x, mask))
    assert dist.gather_objects("a") == ["a"] and dist.broadcast_object(1) == 1
    assert rank_seed(7, 0) == 7 and rank_seed(7, 1) != rank_seed(7, 0)
    assert check_batch(8, 2, 2) == 4
    with pytest.raises(UserError, match="processes x minibatches"):
        check_batch(8, 4, 4)


def _digests(folder: Path) -> list[list[str]]:
    return [(folder / f"rank{r}.txt").read_text().split("\n")[:-1] for r in range(2)]


@pytest.mark.slow
def test_two_process_gloo_training_stays_in_sync_and_resumes(tmp_path):
    # 1. uninterrupted: the ranks hold identical parameters after every update; one copy of each output
    full, digests = tmp_path / "full", tmp_path / "digests"
    digests.mkdir()
    proc = run_cli(*TRAIN, "--out", str(full), env={"RLHF_INTERP_PARAM_DIGESTS": str(digests)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = _digests(digests)
    assert [line.split()[0] for line in rank0] == ["1", "2", "3", "4"]
    assert rank0 == rank1  # same sha256 of every parameter after each of the 4 updates
    assert proc.stdout.count("run written to") == 1  # rank 0 reports, once
    assert {p.name for p in full.iterdir()} == OUTPUTS  # nothing per rank, no leftovers
    assert not list(full.rglob("*.tmp*"))
    m = pd.read_csv(full / "metrics.csv")
    assert m["step"].tolist() == [1, 2, 3, 4] and m["episodes"].tolist() == [8, 16, 24, 32]  # global batch
    assert m["kl_coef"].iloc[-1] != m["kl_coef"].iloc[0]  # adaptive KL moved on the reduced KL
    rollouts = [r for r in pd.read_json(full / "samples.jsonl", lines=True).to_dict("records")
                if r["split"] == "rollout"]
    assert len(rollouts) == 16  # 8 per logged update (2 and 4), from both ranks' episodes
    rng = load_file(full / "checkpoint" / "rng.safetensors")
    assert set(rng) == {"rollout", "shuffle", "rollout.rank1", "shuffle.rank1"}
    assert not torch.equal(rng["rollout"], rng["rollout.rank1"])  # each rank its own stream

    # 2. all ranks killed after update 3 (checkpoint from update 2), then resumed: the same run
    run = tmp_path / "killed"
    killed = run_cli(*TRAIN, "--out", str(run), env={"RLHF_INTERP_DIE_AT": "update-end:3"})
    assert killed.returncode != 0
    resumed = run_cli(*TRAIN, "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv").drop(columns=TIMING), m.drop(columns=TIMING))
    a, b = load_file(full / "tuned" / "model.safetensors"), load_file(run / "tuned" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # 3. a run written by 2 processes refuses to resume on 1 (the ranks' random streams would be lost)
    one = run_cli("train", *ARGS, "--out", str(full), "--resume", "--steps", "5")
    assert one.returncode == 2 and "2 process(es)" in one.stderr
