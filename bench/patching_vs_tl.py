"""Exact cross-model activation patching: rlhf-interp's batched engine vs `transformer_lens.patching` (one forward per
cell), on the same two models and prompts, in the same process, interleaved; medians of `--rounds` runs.

Pairs: the embedded model vs a perturbed copy; a randomly initialised GPT-2-small-shaped pair (12 layers, 768
wide, 12 heads, 50,257-token vocabulary; tuned = base + noise), fed token ids; and SmolLM2-135M (the real model, the
`smollm2` spec: Llama family, 30 layers, 576 wide, 9 query / 3 key-value heads, SwiGLU 1,536, RMSNorm, rotary, tied
49,152-token embedding) vs a copy with 2% Gaussian noise on every attention and MLP projection weight, fed English
review openings (`<|endoftext|>` + 11 tokens). Sweeps: per head over all positions (hook_z, TransformerLens's
convention) and resid_pre per layer × position. Our side is called once untimed first (it checks its fused forward
against the bridge once per model; that first call's time is printed too).

Headlines: one line per pair with a ≥ 3× goal (the per-head sweep on the GPT-2-small shape and on SmolLM2), then the
last line, `patching_vs_tl: ratio R (goal ≥ 3), max_abs_diff D`, with R the smallest and D the largest of them.

    python bench/patching_vs_tl.py [--rounds 3] [--threads 1] [--pairs embedded,gpt2-small,smollm2]
                                   [--smollm2-prompts 16]
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

from rlhf_interp.analysis.metric import Metric, build_metric
from rlhf_interp.analysis.patching import HEAD_HOOK, LAYER_COMPONENTS, Cell, patch_sweep, run_cache
from rlhf_interp.models import EMBEDDED_DIR, load_bridge, load_causal_lm, resolve_model_spec, save_model
from rlhf_interp.sampling import prompt_token_ids

PAIRS = ("embedded", "gpt2-small", "smollm2")
REVIEW_OPENINGS = (  # each at least 11 tokens in SmolLM2's vocabulary
    "I watched this film last night with my family and honestly the movie",
    "After reading so many reviews of this restaurant, we finally went and the food",
    "The new phone arrived yesterday in a plain box, and after a day of use the battery",
    "My honest review of the hotel: the room was small, the staff",
    "We bought these headphones for a long flight and the sound quality",
    "The director's new film is two and a half hours long and the story",
    "I have to say that this novel, which everyone keeps recommending to me,",
    "The concert started an hour late, but once the band came on stage the show",
    "This laptop replaced my old one last month, and so far the keyboard",
    "The second season of the series picks up where the first left off and the writing",
    "Customer service took three days to answer my email, and when they did the reply",
    "The museum's new exhibition covers modern art from the last fifty years and it",
    "We stayed at the campsite for a week in August, and the facilities",
    "The cookbook has over a hundred recipes, and the ones we have tried so far",
    "Our flight was delayed twice before take-off, and the airline's handling of it",
    "The game's graphics are impressive on a large screen, but the controls",
)


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


def smollm2_pair(root: Path, n_prompts: int, n_pos: int, scale: float = 0.02, seed: int = 2
                 ) -> tuple[Path, Path, Metric, torch.Tensor]:
    """The converted SmolLM2 directory (reused from the cache) and a copy with seeded Gaussian noise (`scale` × each
    weight's std) on the attention and MLP projections of every layer; the default logit_diff metric; `n_prompts`
    review openings, `<|endoftext|>` + tokens, cut to `n_pos` tokens."""
    base = resolve_model_spec("smollm2").path
    model, tok = load_causal_lm(str(base))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("_proj.weight",)):
                p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    save_model(model, tok, root / "smollm2_tuned")
    del model
    ids = [prompt_token_ids(tok, text) for text in REVIEW_OPENINGS[:n_prompts]]
    assert min(len(x) for x in ids) >= n_pos, "a review opening is shorter than the positions asked for"
    tokens = torch.tensor([x[:n_pos] for x in ids])
    return base, root / "smollm2_tuned", build_metric("logit_diff", tok), tokens


def _headline(name: str, line: str) -> tuple[float, float]:
    ratio = float(line.split("ratio ")[1].split(",")[0])
    diff = float(line.split("max_abs_diff ")[1])
    print(f"patching_vs_tl[{name} heads]: ratio {ratio:.2f} (goal ≥ 3), max_abs_diff {diff:.2e}", flush=True)
    return ratio, diff


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs", default=",".join(PAIRS), help=f"comma list of {', '.join(PAIRS)}")
    ap.add_argument("--only-embedded", action="store_true", help="the embedded pair only (same as --pairs embedded)")
    ap.add_argument("--smollm2-prompts", type=int, default=16, help="prompts of the SmolLM2 pair (at most 16)")
    ap.add_argument("--smollm2-positions", type=int, default=12, help="tokens per SmolLM2 prompt (at most 12)")
    args = ap.parse_args()
    pairs = ["embedded"] if args.only_embedded else [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = sorted(set(pairs) - set(PAIRS))
    if unknown:
        ap.error(f"unknown pairs {unknown}; one of {', '.join(PAIRS)}")
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; GFLOP/s 1 thread {gflops(1):.1f}, 2 threads {gflops(2):.1f}; "
          f"threads used {args.threads}", flush=True)
    headlines = []
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
        emb_tokens = torch.randint(3, 1024, (16, 12), generator=g)  # drawn first whichever pairs run
        small_tokens = torch.randint(0, 50257, (16, 12), generator=g)
        if "embedded" in pairs:
            emb = GPT2LMHeadModel.from_pretrained(EMBEDDED_DIR)
            e_base, e_tuned = perturbed_pair(emb, tok, root / "emb", 0.05, 0)
            pos = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("great", "good", "wonderful")]
            neg = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("bad", "terrible", "boring")]
            metric = Metric("logit_diff", positive=dict(zip("abc", pos, strict=True)),
                            negative=dict(zip("abc", neg, strict=True)))
            emb_tokens[:, 0] = tok.bos_token_id
            sweep("embedded", e_base, e_tuned, metric, emb_tokens, args.rounds)
        if "gpt2-small" in pairs:
            torch.manual_seed(0)
            config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
            small = GPT2LMHeadModel(config).eval()
            s_base, s_tuned = perturbed_pair(small, tok, root / "small", 0.05, 1)
            del small
            metric = Metric("logit_diff", positive={"a": 1049, "b": 922, "c": 11},
                            negative={"d": 2089, "e": 1434, "f": 7})
            lines = sweep("gpt2-small-shape", s_base, s_tuned, metric, small_tokens, args.rounds)
            headlines.append(_headline("gpt2-small-shape", lines[0]))
        if "smollm2" in pairs:
            m_base, m_tuned, metric, tokens = smollm2_pair(root, args.smollm2_prompts, args.smollm2_positions)
            lines = sweep(f"smollm2 ({tokens.shape[0]}×{tokens.shape[1]} tokens)", m_base, m_tuned, metric, tokens,
                          args.rounds)
            headlines.append(_headline("smollm2", lines[0]))
    if headlines:
        ratio, diff = min(r for r, _ in headlines), max(d for _, d in headlines)
        print(f"patching_vs_tl: ratio {ratio:.2f} (goal ≥ 3), max_abs_diff {diff:.2e}")


if __name__ == "__main__":
    main()
