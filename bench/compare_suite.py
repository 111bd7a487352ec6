"""Wall time and peak RSS of the full `compare` suite, each run in a fresh process (as a user runs it).

Pairs: the embedded model vs a perturbed copy, a randomly initialised GPT-2-small-shaped pair (12 layers, 768
wide, 12 heads, 50,257-token vocabulary; the embedded tokenizer supplies the token ids), and the real SmolLM2-135M
(`smollm2`: a trained run's `base/` and `tuned/` with `--smollm2-run DIR`, e.g. after `make demo-real`; else the
model vs a copy with 5% noise). Goals: ≤ 2 min (embedded), ≤ 15 min and peak RSS ≤ 3 GB (GPT-2-small shape),
≤ 15 min and peak RSS ≤ 4 GB (SmolLM2). One headline line per large pair at the end.

    python bench/compare_suite.py [--only-embedded] [--pairs embedded,gpt2-small-shape,smollm2] [--smollm2-run DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from rlhf_interp.models import EMBEDDED_DIR, load_causal_lm

sys.path.insert(0, str(Path(__file__).parent))
from common import perturbed_pair

CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(2)
t = time.perf_counter()
from rlhf_interp.analysis import compare
compare(sys.argv[1], sys.argv[2], out=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(name: str, base: Path, tuned: Path, out: Path, goal_s: float) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(base), str(tuned), str(out)], capture_output=True,
                          text=True, env={**os.environ, "RLHF_INTERP_QUIET": "1", "TQDM_DISABLE": "1",
                                          "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    timings = json.loads((out / "summary.json").read_text())["timings_s"]
    print(f"{name}: wall {wall:.1f} s (goal ≤ {goal_s:.0f} s) in-process {result['seconds']:.1f} s, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB; per analysis {timings}", flush=True)
    return {"wall": wall, **result}


def smollm2_pair(root: Path, run_dir: str | None) -> tuple[Path, Path]:
    """A trained run's base/ and tuned/ (what a user compares), else SmolLM2 vs a copy with 5% noise."""
    if run_dir:
        base, tuned = Path(run_dir) / "base", Path(run_dir) / "tuned"
        if not (base.is_dir() and tuned.is_dir()):
            raise SystemExit(f"--smollm2-run {run_dir}: needs base/ and tuned/ (a finished `rlhf-interp train` run)")
        return base, tuned
    model, tok = load_causal_lm("smollm2")
    return perturbed_pair(model, tok, root / "smollm2", 0.05, 2)


def headline(name: str, r: dict, goal_mb: int) -> None:
    label = "compare_suite" if name == "gpt2-small-shape" else f"compare_suite[{name}]"  # the first: as before
    print(f"{label}: ratio {900 / r['wall']:.2f} (goal ≥ 1: wall {r['wall']:.0f} s of 900 s allowed), "
          f"peak_rss_mb {r['peak_rss_mb']:.0f} (goal ≤ {goal_mb})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only-embedded", action="store_true")
    ap.add_argument("--pairs", default="embedded,gpt2-small-shape,smollm2", help="comma list of pairs to run")
    ap.add_argument("--smollm2-run", default=None, help="a trained SmolLM2 run directory (base/, tuned/)")
    args = ap.parse_args()
    pairs = ["embedded"] if args.only_embedded else [p.strip() for p in args.pairs.split(",") if p.strip()]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
        if "embedded" in pairs:
            b, t = perturbed_pair(GPT2LMHeadModel.from_pretrained(EMBEDDED_DIR), tok, root / "emb", 0.05, 0)
            run("embedded", b, t, root / "emb_out", 120)
        if "gpt2-small-shape" in pairs:
            torch.manual_seed(0)
            config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id)
            b, t = perturbed_pair(GPT2LMHeadModel(config).eval(), tok, root / "small", 0.05, 1)
            results["gpt2-small-shape"] = run("gpt2-small-shape", b, t, root / "small_out", 900)
        if "smollm2" in pairs:
            b, t = smollm2_pair(root, args.smollm2_run)
            results["smollm2"] = run("smollm2", b, t, root / "smollm2_out", 900)
    for name, goal_mb in (("gpt2-small-shape", 3072), ("smollm2", 4096)):
        if name in results:
            headline(name, results[name], goal_mb)


if __name__ == "__main__":
    main()
