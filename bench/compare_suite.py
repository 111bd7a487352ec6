"""Wall time and peak RSS of the full `compare` suite, each run in a fresh process (as a user runs it).

Pairs: the embedded model vs a perturbed copy, and a randomly initialised GPT-2-small-shaped pair (12 layers, 768
wide, 12 heads, 50,257-token vocabulary; the embedded tokenizer supplies the token ids). Goals: ≤ 2 min (embedded),
≤ 15 min and peak RSS ≤ 3 GB (GPT-2-small shape). The last line is the headline for the GPT-2-small pair.

    python bench/compare_suite.py [--only-embedded]
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

from rlhf_interp.models import EMBEDDED_DIR

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only-embedded", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
        b, t = perturbed_pair(GPT2LMHeadModel.from_pretrained(EMBEDDED_DIR), tok, root / "emb", 0.05, 0)
        run("embedded", b, t, root / "emb_out", 120)
        if args.only_embedded:
            return
        torch.manual_seed(0)
        config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        b, t = perturbed_pair(GPT2LMHeadModel(config).eval(), tok, root / "small", 0.05, 1)
        r = run("gpt2-small-shape", b, t, root / "small_out", 900)
    print(f"compare_suite: ratio {900 / r['wall']:.2f} (goal ≥ 1: wall {r['wall']:.0f} s of 900 s allowed), "
          f"peak_rss_mb {r['peak_rss_mb']:.0f} (goal ≤ 3072)")


if __name__ == "__main__":
    main()
