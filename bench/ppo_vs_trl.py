"""PPO training speed: `rlhf-interp train` vs TRL 1.12's legacy `PPOTrainer` on the same model, reward model, batch,
response length, PPO epochs and minibatches, on CPU. Episodes per second, interleaved rounds, median ratio.

    python bench/ppo_vs_trl.py [--model embedded|smollm2] [--rounds 3] [--threads 0 (auto)] [--episodes N]

TRL runs in a venv of its own (`bench/.trl-venv`, created on first use: `torch==2.13.0` then `trl==1.12.0`), so the
project's environment stays clean. Both sides get:
    policy        `--model embedded` (default): the embedded model (GPT-2, 4 layers x 128 wide, vocabulary 1,024);
                  `--model smollm2`: the real SmolLM2-135M (Llama, 30 layers x 576, vocabulary 49,152), fully
                  fine-tuned on both sides (no LoRA), its tokenizer saved with PAD = `<|im_start|>` (the shipped one
                  has PAD = EOS, which TRL would mask as padding)
    reward model  a seeded random sequence classifier of the policy's own shape and tokenizer (num_labels=1:
                  `GPT2ForSequenceClassification` / `LlamaForSequenceClassification`); ours uses it as
                  `classifier:DIR` (raw logit of prompt + response), TRL as its reward model; TRL also needs a
                  separate value model, initialised from the same weights (its usual recipe)
    batch 16 episodes per update, 2 minibatches, 4 PPO epochs (8 optimizer steps per update), response length 32,
    temperature 0.7, no EOS truncation on TRL's side (every response full length), `--episodes` episodes in all.
Timed: TRL's `trainer.train()`; ours, the sum of the update times (rollout + score + optimise; `time_s` of
metrics.csv), which leaves out the evaluation before/after and the report that TRL's run does not do. The full wall
time of our `train()` call is printed too. Each side runs in a fresh process per round.
The last line is the headline: `ppo_vs_trl: ratio R (goal ≥ 2)`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_VENV = HERE / ".trl-venv"
BATCH, MINIBATCHES, EPOCHS, RESPONSE, TEMPERATURE = 16, 2, 4, 32, 0.7


# --- the two sides (each runs in its own process and prints one JSON line) -------------------------------------------
def side_ours(models: Path, episodes: int, out: Path) -> dict:
    from rlhf_interp.ppo import run_training

    t = time.perf_counter()
    summary = run_training(None, {
        "model": str(models / "policy"), "reward": f"classifier:{models / 'reward'}", "classifier_output": "logit",
        "classifier_label": "0", "reward_text": "prompt+response", "prompts": str(models / "prompts.txt"),
        "steps": episodes // BATCH, "batch_size": BATCH, "minibatches": MINIBATCHES, "ppo_epochs": EPOCHS,
        "response_length": RESPONSE, "temperature": TEMPERATURE, "eval_samples_per_prompt": 1, "log_every": 10_000,
        "save_every": 10_000, "out": str(out), "device": "cpu",
    }, overwrite=True)
    return {"episodes": summary["episodes"], "seconds": summary["train_seconds"], "wall": time.perf_counter() - t}


def side_trl(models: Path, episodes: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(models / "policy", padding_side="left")
    prompts = (models / "prompts.txt").read_text().splitlines()
    ids = [[tok.bos_token_id, *tok(p, add_special_tokens=False)["input_ids"]] for p in prompts]  # BOS + prompt, as ours
    dataset = Dataset.from_dict({"input_ids": [ids[i % len(ids)] for i in range(episodes)]})
    config = PPOConfig(
        output_dir=str(out), per_device_train_batch_size=BATCH, num_mini_batches=MINIBATCHES, num_ppo_epochs=EPOCHS,
        response_length=RESPONSE, temperature=TEMPERATURE, total_episodes=episodes,
        local_rollout_forward_batch_size=BATCH, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to=[], save_strategy="no", num_sample_generations=0, stop_token=None, seed=0, learning_rate=1e-4,
        kl_coef=0.05, vf_coef=0.1, logging_steps=10_000,
    )
    trainer = PPOTrainer(
        args=config, processing_class=tok,
        model=AutoModelForCausalLM.from_pretrained(models / "policy"),
        ref_model=AutoModelForCausalLM.from_pretrained(models / "policy"),
        reward_model=AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(models / "reward", num_labels=1),
        train_dataset=dataset,
    )
    torch.manual_seed(0)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    return {"episodes": episodes, "seconds": seconds, "wall": seconds}


# --- the driver ------------------------------------------------------------------------------------------------------
def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import trl.experimental.ppo"], capture_output=True,
                                          env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}).returncode == 0:
        return python
    print(f"creating {TRL_VENV} (torch==2.13.0 CPU wheel, then trl==1.12.0) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU wheel first, or pip pulls a CUDA build
    subprocess.run([*pip, "trl==1.12.0"], check=True)
    return python


def build_models(root: Path, model: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rlhf_interp.models import load_causal_lm
    from rlhf_interp.prompts import default_prompts

    policy, tok = load_causal_lm(model)
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = "<|im_start|>"  # SmolLM2: a special token plain-text prompts and responses never hold
        policy.config.pad_token_id = policy.generation_config.pad_token_id = tok.pad_token_id
    policy.save_pretrained(root / "policy", safe_serialization=True)
    tok.save_pretrained(root / "policy")
    config = {k: v for k, v in policy.config.to_dict().items() if k not in ("id2label", "label2id")}
    config.update(num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    reward = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(**config))
    reward.save_pretrained(root / "reward", safe_serialization=True)
    tok.save_pretrained(root / "reward")
    (root / "prompts.txt").write_text("\n".join(default_prompts(tok)) + "\n")


def run_side(python: str, side: str, models: Path, episodes: int, threads: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RLHF_INTERP_QUIET": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([python, __file__, "--side", side, "--models", str(models), "--episodes", str(episodes),
                           "--threads", str(threads), "--out", str(out)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0: 1 unless 2 threads are clearly faster right now")
    ap.add_argument("--model", choices=["embedded", "smollm2"], default="embedded")
    ap.add_argument("--episodes", type=int, default=0, help="0: 256 (embedded), 64 (smollm2)")
    ap.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:  # a worker process
        import torch

        torch.set_num_threads(args.threads)
        fn = side_ours if args.side == "ours" else side_trl
        print(json.dumps(fn(args.models, args.episodes, args.out)))
        return

    sys.path.insert(0, str(HERE))
    from common import gflops, machine

    args.episodes = args.episodes or (256 if args.model == "embedded" else 64)
    python = ensure_trl_venv()
    g1, g2 = gflops(1), gflops(2)
    threads = args.threads or (2 if g2 > 1.5 * g1 else 1)
    print(f"machine: {machine()}; matmul {g1:.1f} GFLOP/s (1 thread), {g2:.1f} (2 threads); using {threads} "
          f"thread(s)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ppo-vs-trl-") as tmp:
        root = Path(tmp)
        build_models(root, args.model)
        for r in range(args.rounds):  # interleaved: ours, TRL, ours, TRL ...
            ours = run_side(sys.executable, "ours", root, args.episodes, threads, root / f"ours{r}")
            trl = run_side(str(python), "trl", root, args.episodes, threads, root / f"trl{r}")
            row = {"ours": ours["episodes"] / ours["seconds"], "trl": trl["episodes"] / trl["seconds"],
                   "ours_wall": ours["wall"]}
            row["ratio"] = row["ours"] / row["trl"]
            rows.append(row)
            print(f"round {r + 1}: ours {row['ours']:.2f} episodes/s ({ours['seconds']:.1f} s of updates, "
                  f"{ours['wall']:.1f} s for the whole train() with evaluations and report), TRL {row['trl']:.2f} "
                  f"episodes/s ({trl['seconds']:.1f} s), ratio {row['ratio']:.2f}", flush=True)
    g1b, g2b = gflops(1), gflops(2)
    print(f"after: matmul {g1b:.1f} GFLOP/s (1 thread), {g2b:.1f} (2 threads)")
    med = {k: statistics.median(row[k] for row in rows) for k in ("ours", "trl", "ratio")}
    print(f"medians over {len(rows)} rounds: ours {med['ours']:.2f} episodes/s, TRL {med['trl']:.2f} episodes/s "
          f"({args.model}, {args.episodes} episodes, batch {BATCH}, {MINIBATCHES} minibatches, {EPOCHS} epochs, "
          f"response {RESPONSE}, {threads} thread(s))")
    label = "ppo_vs_trl" if args.model == "embedded" else f"ppo_vs_trl[{args.model}]"
    print(f"{label}: ratio {med['ratio']:.2f} (goal ≥ 2)")


if __name__ == "__main__":
    main()
