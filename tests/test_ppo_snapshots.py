"""--snapshot-every: snapshots/step-NNNNNN/ HF directories along training, consistent under --resume."""

import hashlib

from transformers import AutoModelForCausalLM

from rlhf_interp.models import load_causal_lm
from rlhf_interp.ppo import run_training


def _opts(tmp_path, **kw):
    return {"out": str(tmp_path / "run"), "steps": 4, "batch_size": 8, "minibatches": 2, "ppo_epochs": 1,
            "response_length": 8, "eval_samples_per_prompt": 1, "log_every": 4, "save_every": 2,
            "snapshot_every": 2, **kw}


def _sha(d):
    return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()


def test_snapshots_layout_and_resume(tmp_path):
    run = tmp_path / "run"
    run_training(overrides=_opts(tmp_path, steps=2))
    snaps = run / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["step-000000", "step-000002"]
    assert _sha(snaps / "step-000000") == _sha(run / "base")
    assert _sha(snaps / "step-000002") == _sha(run / "tuned")
    model, tok = load_causal_lm(str(snaps / "step-000002"))  # loadable like base/ (weights + tokenizer)
    assert model.config.vocab_size == len(tok)
    # a stale snapshot beyond the checkpoint (a kill after it was written) is removed on resume, then redone
    (snaps / "step-000003").mkdir()
    run_training(overrides=_opts(tmp_path, steps=4), resume=True)
    assert sorted(p.name for p in snaps.iterdir()) == ["step-000000", "step-000002", "step-000004"]
    assert _sha(snaps / "step-000004") == _sha(run / "tuned")
    # the resumed trajectory is the uninterrupted one
    run_training(overrides=_opts(tmp_path, out=str(tmp_path / "straight")))
    straight = tmp_path / "straight" / "snapshots"
    assert [_sha(straight / n) for n in ("step-000002", "step-000004")] == \
        [_sha(snaps / n) for n in ("step-000002", "step-000004")]
    assert AutoModelForCausalLM.from_pretrained(snaps / "step-000004") is not None
