"""LoRA training (`train --lora-r R`): the reference is the base (adapters off), `tuned/` is the merged model, resume
continues exactly. On a tiny GPT-2 (Conv1D projections) and a tiny Llama (Linear, GQA, SwiGLU) built here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from rlhf_interp.embedded.corpus import generate_reviews
from rlhf_interp.embedded.pretrain import train_tokenizer
from rlhf_interp.errors import UserError
from rlhf_interp.models import load_causal_lm, save_model
from rlhf_interp.ppo import lora, run_training
from rlhf_interp.ppo.config import TrainConfig, validate
from rlhf_interp.ppo.rundir import RunFiles
from rlhf_interp.ppo.trainer import PPOTrainer
from rlhf_interp.sampling import encode_prompts

TIMING = ["episodes_per_s", "time_s"]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    tok = train_tokenizer(generate_reviews(400, seed=3), 300)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("llama") / "model"
    save_model(LlamaForCausalLM(config).eval(), tok, out)
    return out


def small(out: Path, model: str, **kw) -> dict:
    return {"out": str(out), "model": model, "steps": 2, "batch_size": 8, "minibatches": 2, "ppo_epochs": 2,
            "response_length": 10, "eval_samples_per_prompt": 1, "log_every": 1, "save_every": 1, "lora_r": 4,
            "lr": 1e-2, **kw}


def _logits(model, tok, prompts):
    ids, mask = encode_prompts(tok, prompts)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask.long()).logits


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_reference_is_base_and_merged_equals_adapters(which, tiny_gpt2_dir, tiny_llama_dir, tmp_path):
    model_dir = str(tiny_gpt2_dir if which == "gpt2" else tiny_llama_dir)
    cfg = validate(TrainConfig(model=model_dir, out=str(tmp_path), lora_r=4, device="cpu"))
    trainer = PPOTrainer(cfg, RunFiles(tmp_path))
    expected = {"gpt2": ["c_attn", "c_fc", "c_proj"],
                "llama": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]}[which]
    assert lora.target_modules(load_causal_lm(model_dir)[0], "auto") == expected
    trainable = [n for n, p in trainer.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    optimised = {id(p) for g in trainer.opt.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in trainer.policy.parameters() if p.requires_grad} | \
        {id(p) for p in trainer.value_head.parameters()}
    base, tok = load_causal_lm(model_dir)
    prompts = trainer.prompts[:4]
    # B = 0 at the start: policy == base
    assert (_logits(trainer.policy, tok, prompts) - _logits(base, tok, prompts)).abs().max() < 1e-6
    with torch.no_grad():  # move the adapters away from zero
        g = torch.Generator().manual_seed(0)
        for n, p in trainer.policy.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    adapted = _logits(trainer.policy, tok, prompts)
    assert (adapted - _logits(base, tok, prompts)).abs().max() > 1e-2
    # the reference (adapters off) is exactly the base, and switching them off leaves them on afterwards
    assert torch.equal(_logits(trainer.ref, tok, prompts), _logits(base, tok, prompts))
    assert torch.equal(_logits(trainer.policy, tok, prompts), adapted)
    assert all(p.requires_grad for n, p in trainer.policy.named_parameters() if "lora_" in n)
    # written merged: a plain HF model (no adapter keys) whose outputs equal the adapter model's
    save_model(trainer.export, tok, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    assert (_logits(merged, tok, prompts) - adapted).abs().max() < 1e-5


def test_lora_config_errors(tiny_llama_dir, tmp_path):
    with pytest.raises(UserError, match="lora_r"):
        validate(TrainConfig(lora_r=-1))
    with pytest.raises(UserError, match="no module named nope"):
        PPOTrainer(validate(TrainConfig(model=str(tiny_llama_dir), lora_r=2, lora_targets="q_proj,nope")),
                   RunFiles(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_lora_training_and_resume(which, tiny_gpt2_dir, tiny_llama_dir, tmp_path, monkeypatch):
    model_dir = str(tiny_gpt2_dir if which == "gpt2" else tiny_llama_dir)
    monkeypatch.chdir(Path(__file__).parent)
    opts = dict(reward="python:reward_fns:fail_at_call", steps=3)
    run_training(overrides=small(tmp_path / "a", model_dir, **opts))
    monkeypatch.setenv("RLHF_TEST_FAIL_AT_CALL", "5")  # calls: eval@0, update1, eval@1, update2, eval@2, update3
    import reward_fns

    reward_fns._calls["n"] = 0
    with pytest.raises(Exception, match="simulated failure"):
        run_training(overrides=small(tmp_path / "b", model_dir, **opts))
    monkeypatch.delenv("RLHF_TEST_FAIL_AT_CALL")
    assert (tmp_path / "b" / "checkpoint" / "policy" / lora.ADAPTER_FILE).is_file()
    run_training(overrides=small(tmp_path / "b", model_dir, **opts), resume=True)
    a = pd.read_csv(tmp_path / "a" / "metrics.csv").drop(columns=TIMING)
    b = pd.read_csv(tmp_path / "b" / "metrics.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)
    # policy == base on the first rollout; then KL > 0 (k3: k1's batch mean of 8 episodes can dip below 0)
    assert a["kl_k1"].iloc[0] == pytest.approx(0, abs=1e-4) and (a["kl_k3"].iloc[1:] > 0).all()
    ta = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "tuned").state_dict()
    tb = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "tuned").state_dict()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    # base/ is the starting model, tuned/ moved away from it; the checkpoint's policy loads as a plain model
    start = load_causal_lm(model_dir)[0].state_dict()
    saved_base = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "base").state_dict()
    assert all(torch.equal(saved_base[k], start[k]) for k in start)
    assert any(not torch.equal(ta[k], start[k]) for k in start)
    load_causal_lm(str(tmp_path / "a" / "checkpoint" / "policy"))
