"""Exact cross-model activation patching: rlhf-interp's batched engine vs `transformer_lens.patching` (one forward per
cell), on the same two models and prompts, in the same process, interleaved; medians of `--rounds` runs.

Pairs: the embedded model vs a perturbed copy, and a randomly initialised GPT-2-small-shaped pair (12 layers, 768
wide, 12 heads, 50,257-token vocabulary; tuned = base + noise), fed token ids. Sweeps: per head over all positions
(hook_z, TransformerLens's convention) and resid_pre per layer × position. The last line is the headline: the per-head
sweep on the GPT-2-small pair. Our side is called once untimed first (it checks its fused forward against the
bridge once per model; that first call's time is printed too).

    python bench/patching_vs_tl.py [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformer_lens.patching as tl_patching
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).parent))
from common import gflops, interleaved, machine, perturbed_pair

from rlhf_interp.analysis.metric import Metric
from rlhf_interp.analysis.patching import HEAD_HOOK, LAYER_COMPONENTS, Cell, patch_sweep, run_cache
from rlhf_interp.models import EMBEDDED_DIR, load_bridge


def sweep(name: str, base_dir: Path, tuned_dir: Path, metric: Metric, tokens: torch.Tensor, rounds: int) -> list[str]:
    base, tuned = load_bridge(base_dir, fold_value_biases=False), load_bridge(tuned_dir, fold_value_biases=False)
    n_layers, n_heads, n_pos = base.cfg.n_layers, base.cfg.n_heads, tokens.shape[1]
    names = [HEAD_HOOK.format(L=L) for L in range(n_layers)]
    names += [LAYER_COMPONENTS["resid_pre"].format(L=L) for L in range(n_layers)]
    cache = run_cache(tuned, tokens, names)

    def mean_metric(logits: torch.Tensor) -> torch.Tensor:
        return metric(logits).mean()

    lines = []
    sweeps = {
        "heads": (lambda: tl_patching.get_act_patch_attn_head_out_all_pos(base, tokens, cache, mean_metric).flatten(),
                  [Cell(HEAD_HOOK, L, head=h) for L in range(n_layers) for h in range(n_heads)]),
        "resid_pre": (lambda: tl_patching.get_act_patch_resid_pre(base, tokens, cache, mean_metric).flatten(),
                      [Cell(LAYER_COMPONENTS["resid_pre"], L, pos=p) for L in range(n_layers) for p in range(n_pos)]),
    }
    for sweep_name, (reference, cells) in sweeps.items():
        results = {}

        def ours(cells=cells, results=results) -> None:
            results["ours"] = patch_sweep(base, cache, tokens, cells, metric, cells_per_forward=8)

        def theirs(reference=reference, results=results) -> None:
            results["tl"] = reference()

        with torch.no_grad():
            t = time.perf_counter()
            ours()  # first call: also checks the fused forward against the bridge (once per model and weights)
            t_first = time.perf_counter() - t
            t_tl, t_ours = interleaved(theirs, ours, rounds)
        diff = (results["ours"] - results["tl"]).abs().max().item()
        spread = (results["tl"].max() - results["tl"].min()).item()  # the comparison is not vacuous
        ratio = t_tl / t_ours
        lines.append(f"{name} {sweep_name}: {len(cells)} cells, TL {t_tl:.2f} s, ours {t_ours:.2f} s "
                     f"(first call {t_first:.2f} s), "
                     f"ratio {ratio:.2f}, spread of values {spread:.3f}, max_abs_diff {diff:.2e}")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only-embedded", action="store_true", help="skip the GPT-2-small-shaped pair (minutes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; GFLOP/s 1 thread {gflops(1):.1f}, 2 threads {gflops(2):.1f}; "
          f"threads used {args.threads}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
        emb = GPT2LMHeadModel.from_pretrained(EMBEDDED_DIR)
        e_base, e_tuned = perturbed_pair(emb, tok, root / "emb", 0.05, 0)
        pos = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("great", "good", "wonderful")]
        neg = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("bad", "terrible", "boring")]
        metric = Metric("logit_diff", positive=dict(zip("abc", pos, strict=True)),
                        negative=dict(zip("abc", neg, strict=True)))
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(3, 1024, (16, 12), generator=g)
        tokens[:, 0] = tok.bos_token_id
        lines = sweep("embedded", e_base, e_tuned, metric, tokens, args.rounds)
        if args.only_embedded:
            return
        torch.manual_seed(0)
        config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
        small = GPT2LMHeadModel(config).eval()
        s_base, s_tuned = perturbed_pair(small, tok, root / "small", 0.05, 1)
        metric = Metric("logit_diff", positive={"a": 1049, "b": 922, "c": 11}, negative={"d": 2089, "e": 1434, "f": 7})
        tokens = torch.randint(0, 50257, (16, 12), generator=g)
        lines = sweep("gpt2-small-shape", s_base, s_tuned, metric, tokens, args.rounds)
    head_line = lines[0]
    ratio = float(head_line.split("ratio ")[1].split(",")[0])
    diff = head_line.split("max_abs_diff ")[1]
    print(f"patching_vs_tl: ratio {ratio:.2f} (goal ≥ 3), max_abs_diff {diff}")


if __name__ == "__main__":
    main()
