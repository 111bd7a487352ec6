"""`compare RUN --trajectory`: base vs every snapshot of a run.

(1) A run directory built from the embedded model whose snapshots carry a planted change that grows linearly with
the step (one MLP neuron's output row += (step / last) · 10 · the sentiment direction): every quantity the plant drives
is monotone in the step, untouched components stay at zero, and the last snapshot's row equals a plain compare of
base vs that snapshot. (2) The CLI on a real (tiny) training run with --snapshot-every writes trajectory.csv and
the report shows the figure and a finding.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, run_cli, sentiment_direction

from rlhf_interp.analysis import compare
from rlhf_interp.analysis.trajectory import checkpoint_change, half_way_step, snapshot_dirs
from rlhf_interp.errors import UserError
from rlhf_interp.models import EMBEDDED_DIR, load_causal_lm, save_model
from rlhf_interp.prompts import EMBEDDED_PROMPTS

LAYER = 2
STEPS = (0, 2, 4, 6)
EVAL = list(EMBEDDED_PROMPTS[:4])
FAST = {"samples_per_prompt": 2, "new_tokens": 12, "seed": 0}


def _active_neuron(model, tok) -> int:
    """The layer-LAYER neuron with the largest mean activation at the prompts' last position (so it is on)."""
    acts = []
    handle = model.transformer.h[LAYER].mlp.act.register_forward_hook(lambda m, i, o: acts.append(o[:, -1]))
    with torch.no_grad():
        for p in EMBEDDED_PROMPTS:
            model(torch.tensor([tok(p)["input_ids"]]))
    handle.remove()
    return int(torch.cat(acts).mean(0).argmax())


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """RUN/{base,tuned,snapshots/step-00000{0,2,4,6}}, prompts_eval.txt, metrics.csv and eval.csv."""
    run = tmp_path_factory.mktemp("traj") / "run"
    model, tok = load_causal_lm(str(EMBEDDED_DIR))
    neuron = _active_neuron(model, tok)
    d = sentiment_direction(model, tok)
    row = model.transformer.h[LAYER].mlp.c_proj.weight  # (d_mlp, d_model): row `neuron` is its output direction
    original = row[neuron].detach().clone()
    for step in STEPS:
        with torch.no_grad():
            row[neuron] = original + (step / STEPS[-1]) * 10.0 * d
        save_model(model, tok, run / "snapshots" / f"step-{step:06d}")
    shutil.copytree(run / "snapshots" / "step-000000", run / "base")
    shutil.copytree(run / "snapshots" / f"step-{STEPS[-1]:06d}", run / "tuned")
    (run / "prompts_eval.txt").write_text("".join(p + "\n" for p in EVAL))
    pd.DataFrame({"step": range(1, STEPS[-1] + 1), "score_mean": np.linspace(0.1, 0.6, STEPS[-1])}).to_csv(
        run / "metrics.csv", index=False)
    pd.DataFrame({"step": [0, 4, 6], "score_mean": [0.0, 0.3, 0.5], "kl": [0.0, 1.0, 2.0]}).to_csv(
        run / "eval.csv", index=False)
    return run, neuron


def _series(df: pd.DataFrame, quantity: str, **where) -> pd.Series:
    sel = df[df.quantity == quantity]
    for k, v in where.items():
        sel = sel[sel[k].isna()] if v is None else sel[sel[k] == v]
    return sel.set_index("step").value.sort_index()


def _monotone(s: pd.Series) -> bool:
    v = s.to_numpy()
    return bool(np.all(np.diff(v) > 0))


def test_planted_growth_is_monotone_and_last_point_is_the_plain_compare(planted_run, tmp_path, monkeypatch):
    import gc
    import weakref

    import rlhf_interp.models as models

    run, _neuron = planted_run
    loaded, alive_at_load = [], []
    real_load = models.load_bridge

    def counting_load(source, **kw):  # one snapshot at a time beside the base: the previous one is gone
        bridge = real_load(source, **kw)
        if "snapshots" in str(source.location):
            gc.collect()
            alive_at_load.append(sum(r() is not None for r in loaded))
            loaded.append(weakref.ref(bridge))
        return bridge

    monkeypatch.setattr(models, "load_bridge", counting_load)
    t0 = time.perf_counter()
    tables = compare(str(run), None, prompts=EVAL, analyses="logit_diff", trajectory=True, out=tmp_path / "out",
                     **FAST)
    elapsed = time.perf_counter() - t0
    monkeypatch.setattr(models, "load_bridge", real_load)
    assert alive_at_load == [0, 0]  # steps 2 and 4 loaded; step 0 is the base and step 6 the tuned, both reused
    df = tables["trajectory"]
    assert sorted(df.step.unique()) == list(STEPS)  # tuned = the last snapshot: not repeated
    gap = _series(df, "metric_gap")
    assert gap[0] == 0.0 and _monotone(gap) and gap[6] > 0.5
    act = _series(df, "dla_delta_activation", component="mlp", layer=LAYER)
    assert act[0] == 0.0 and _monotone(act)
    for L in range(LAYER):  # upstream of the plant no output moves; their DLA activation part is only the final
        # norm's rescaling (the scale goes with the activations, dla.py), small beside the planted layer's
        assert _series(df, "adl_norm", layer=L).abs().max() == 0.0
        assert _series(df, "dla_delta_activation", component="mlp", layer=L).abs().max() < 0.02 * act[6]
    adl_at = _series(df, "adl_norm", layer=LAYER)
    assert _monotone(adl_at)
    np.testing.assert_allclose(adl_at / adl_at[6], np.array(STEPS) / 6, atol=1e-5)  # linear in the step there
    w = _series(df, "weight_rel_change", component="mlp_out", layer=LAYER)
    np.testing.assert_allclose(w / w[6], np.array(STEPS) / 6, atol=1e-5)
    assert _series(df, "weight_rel_change", component="QK", layer=None).abs().max() < 1e-6
    assert _series(df, "weight_rel_change", component="mlp_in", layer=None).abs().max() < 1e-6
    assert _monotone(_series(df, "weight_rel_change", component="all_params"))
    assert _monotone(_series(df, "kl_per_sequence")) and _series(df, "kl_per_sequence")[0] == 0.0
    # logged numbers: eval.csv at its steps; rollouts of the policy after s updates are metrics row s + 1
    assert _series(df, "reward_logged_eval").to_dict() == {0: 0.0, 4: 0.3, 6: 0.5}
    rollout = _series(df, "reward_logged_rollout")
    assert list(rollout.index) == [0, 2, 4] and rollout[0] == pytest.approx(0.1)
    # the last snapshot's numbers equal a plain compare of base vs that snapshot on the same prompts and seed
    last = run / "snapshots" / "step-000006"
    plain = compare(str(run / "base"), str(last), prompts=EVAL, analyses="behaviour,logit_diff,dla,adl,weight_diff",
                    reward="vader", **FAST)
    at6 = df[df.step == 6]
    ld = plain["logit_diff"]
    mean_gap = ld[(ld.prompt == "(mean)") & (ld.model == "delta")].iloc[0]
    row = at6[at6.quantity == "metric_gap"].iloc[0]
    assert (row.value, row.ci_low, row.ci_high) == pytest.approx((mean_gap.metric, mean_gap.ci_low, mean_gap.ci_high),
                                                                 rel=1e-6)
    dl = plain["dla_layers"]
    for part in ("delta_activation", "delta_readout"):
        total = float(dl[(dl.component == "total") & (dl.model == part)].attribution.iloc[0])
        assert _series(at6, f"dla_{part}", component="total")[6] == pytest.approx(total, rel=1e-5, abs=1e-7)
    bs = plain["behaviour_summary"].set_index("model")
    assert _series(at6, "kl_per_sequence")[6] == pytest.approx(bs.kl_per_sequence["tuned"], rel=1e-6)
    assert _series(at6, "reward_resampled")[6] == pytest.approx(bs.reward_mean["tuned"], rel=1e-6, abs=1e-9)
    assert _series(df, "reward_resampled")[0] == pytest.approx(bs.reward_mean["base"], rel=1e-6, abs=1e-9)
    norms = plain["adl_norm"].set_index("layer")
    for L in range(4):
        assert _series(at6, "adl_norm", layer=L)[6] == pytest.approx(norms.norm[L], rel=1e-5, abs=1e-7)
    wd = plain["weight_diff"]
    mlp_out = float(wd[(wd.component == "mlp_out") & (wd.layer == LAYER)].rel_change.iloc[0])
    assert _series(at6, "weight_rel_change", component="mlp_out", layer=LAYER)[6] == pytest.approx(mlp_out, rel=1e-5)
    # an independent check of the all-parameter change, by hand (named_parameters: the tied unembedding once)
    b_sd = {k: v.detach() for k, v in load_causal_lm(str(run / "base"))[0].named_parameters()}
    l_sd = {k: v.detach() for k, v in load_causal_lm(str(last))[0].named_parameters()}
    keys = list(b_sd)
    num = sum(float((l_sd[k].double() - b_sd[k].double()).pow(2).sum()) for k in keys)
    den = sum(float(b_sd[k].double().pow(2).sum()) for k in keys)
    assert checkpoint_change(run / "base", last) == pytest.approx((num / den) ** 0.5, rel=1e-6)
    print(f"trajectory over {len(STEPS)} points on the embedded model: {elapsed:.1f} s")


def test_half_way_step():
    assert half_way_step([0, 2, 4, 6], [0.0, 0.1, 0.6, 1.0]) == 4
    assert half_way_step([0, 2, 4], [1.0, 0.2, 0.0]) == 2
    assert half_way_step([0, 2], [1.0, 1.0]) is None


def test_a_run_without_snapshots_says_how_to_make_them(planted_run, tmp_path):
    run, _ = planted_run
    bare = tmp_path / "bare"
    shutil.copytree(run / "base", bare / "base")
    shutil.copytree(run / "tuned", bare / "tuned")
    with pytest.raises(UserError, match="--snapshot-every"):
        snapshot_dirs(bare)
    with pytest.raises(UserError, match="run directory"):
        compare(str(run / "base"), str(run / "tuned"), analyses="logit_diff", trajectory=True)
    proc = run_cli("compare", str(bare), "--trajectory", "--analyses", "logit_diff", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "--snapshot-every")


@pytest.mark.slow
def test_cli_trajectory_on_a_trained_run(tmp_path):
    """A real (tiny) PPO run with --snapshot-every, then `compare RUN --trajectory` from the command line."""
    from rlhf_interp.ppo import run_training

    run = tmp_path / "run"
    t0 = time.perf_counter()
    run_training(overrides={"out": str(run), "steps": 4, "batch_size": 8, "minibatches": 2, "ppo_epochs": 1,
                            "response_length": 8, "eval_samples_per_prompt": 1, "log_every": 2, "save_every": 4,
                            "snapshot_every": 2})
    trained = time.perf_counter() - t0
    out = tmp_path / "cmp"
    t0 = time.perf_counter()
    proc = run_cli("--threads", "1", "compare", str(run), "--trajectory", "--analyses", "logit_diff", "--out",
                   str(out))
    compared = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out / "tables" / "trajectory.csv")
    assert list(df.columns[:5]) == ["step", "quantity", "layer", "component", "value"]
    assert sorted(df.step.unique()) == [0, 2, 4]
    at0 = df[df.step == 0].set_index("quantity").value
    assert at0["metric_gap"] == 0.0 and at0["kl_per_sequence"] == 0.0
    assert df[(df.step == 4) & (df.quantity == "weight_rel_change") & (df.component == "all_params")].value.iloc[0] > 0
    # the run's own evaluation at steps 0, 2, 4 (log_every 2) is carried over as logged
    ev = pd.read_csv(run / "eval.csv")
    logged = df[df.quantity == "reward_logged_eval"].set_index("step").value
    assert logged.to_dict() == pytest.approx(dict(zip(ev.step, ev.score_mean, strict=True)))
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Training trajectory: when did it change" in html and (out / "figures" / "trajectory.png").is_file()
    assert "Trajectory over 3 points of the run (steps 0–4)" in html
    print(f"tiny run: train {trained:.1f} s, compare --trajectory (logit_diff + 3 points) {compared:.1f} s")
