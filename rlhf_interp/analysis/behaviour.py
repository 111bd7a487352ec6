"""`behaviour`: what the two models actually write. Samples from both (plain HF models, same seed and prompts, one
model in memory at a time), the reward of each sample, text statistics (length, EOS rate, distinct-n, repetition),
and the exact per-token KL(tuned ‖ base) = Σ_v p_tuned(v) log(p_tuned(v) / p_base(v)) along each tuned sample
(`token_kl`), from the two bridges' full forwards (log-probs do not see the compatibility mode's centred logits)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.rewards import check_scores, get_reward
from rlhf_interp.sampling import Samples, sample_seeded
from rlhf_interp.sampling import has_eos as ends_with_eos
from rlhf_interp.text_stats import distinct_n, repetition_rate


@torch.no_grad()
def behaviour(pair: ModelPair, reward: str = "vader", samples_per_prompt: int = 4, new_tokens: int = 32,
              seed: int = 0) -> dict[str, pd.DataFrame]:
    reward_fn = get_reward(reward)
    batch = [p for p in pair.prompts for _ in range(samples_per_prompt)]
    rows, kl_rows, summary = [], [], []
    for model_name in ("base", "tuned"):
        s, texts = sample_seeded(pair.hf(model_name), pair.tokenizer, batch, new_tokens, seed, stop_at_eos=True)
        pair.release_hf()  # the HF copy is only for sampling: never two in memory
        scores = check_scores(reward, reward_fn, texts)
        lengths = s.response_mask.sum(-1)
        has_eos = ends_with_eos(s.response_ids, s.response_mask, pair.tokenizer.eos_token_id)
        for i, (p, t, sc) in enumerate(zip(batch, texts, scores, strict=True)):
            rows.append({"model": model_name, "sample": i, "prompt": p, "response": t, "reward": sc,
                         "length": int(lengths[i]), "eos": bool(has_eos[i])})
        summary.append({"model": model_name, "reward_mean": float(torch.tensor(scores).mean()),
                        "reward_std": float(torch.tensor(scores).std()), "length_mean": lengths.float().mean().item(),
                        "eos_rate": has_eos.float().mean().item(), "distinct_1": distinct_n(texts, 1),
                        "distinct_2": distinct_n(texts, 2), "distinct_3": distinct_n(texts, 3),
                        "repetition_3": repetition_rate(texts, 3)})
        if model_name == "tuned":
            kl_rows = _token_kl(pair, s)
    kl = pd.DataFrame(kl_rows)
    summary_df = pd.DataFrame(summary)
    summary_df["kl_per_sequence"] = [float("nan"), kl.groupby("sample").kl.sum().mean() if len(kl) else float("nan")]
    table = pd.DataFrame(rows)
    return {"behaviour": table, "behaviour_summary": summary_df, "token_kl": kl,
            "behaviour_change": behaviour_change(table, seed)}


CHANGE_STATS = {  # statistic -> function of a model's samples (rows of the behaviour table)
    "reward_mean": lambda d: float(d.reward.mean()),
    "eos_rate": lambda d: float(d.eos.astype(float).mean()),
    "length_mean": lambda d: float(d.length.mean()),
    "distinct_2": lambda d: distinct_n(list(d.response), 2),
    "repetition_3": lambda d: repetition_rate(list(d.response), 3),
}


def behaviour_change(table: pd.DataFrame, seed: int = 0, n_boot: int = 500) -> pd.DataFrame:
    """tuned − base of each text statistic with a 95% bootstrap CI (samples of each model resampled independently):
    a threshold on a change is read against its CI, so sampling noise alone cannot flip a finding."""
    rng = np.random.default_rng(seed)
    models = {m: table[table.model == m].reset_index(drop=True) for m in ("base", "tuned")}
    rows = []
    for stat, fn in CHANGE_STATS.items():
        b, t = fn(models["base"]), fn(models["tuned"])
        boots = [fn(models["tuned"].iloc[rng.integers(0, len(models["tuned"]), len(models["tuned"]))])
                 - fn(models["base"].iloc[rng.integers(0, len(models["base"]), len(models["base"]))])
                 for _ in range(n_boot)]
        lo, hi = np.nanpercentile(boots, [2.5, 97.5])
        rows.append({"statistic": stat, "base": b, "tuned": t, "change": t - b, "ci_low": float(lo),
                     "ci_high": float(hi), "n_base": len(models["base"]), "n_tuned": len(models["tuned"])})
    return pd.DataFrame(rows)


def _token_kl(pair: ModelPair, s: Samples, chunk: int = 8) -> list[dict]:
    """Exact KL at every response position. Samples are grouped by prompt length so that each forward sees unpadded
    sequences (the padding after an EOS comes after every position read), `chunk` at a time (a 50k vocabulary makes
    the full (batch, pos, vocab) log-probs of two models over a GB)."""
    query, response = s.query_ids.cpu(), s.response_ids.cpu()
    resp = response.shape[1]
    q_lens = s.query_mask.sum(-1).cpu()
    kl = torch.zeros(response.shape)
    for q_len in q_lens.unique().tolist():
        idx = (q_lens == q_len).nonzero().flatten()
        for rows in idx.split(chunk):
            ids = torch.cat([query[rows, query.shape[1] - q_len :], response[rows]], 1).to(pair.device)
            # positions q_len - 1 .. end - 1 predict the response tokens
            lt = pair.tuned(ids)[:, q_len - 1 : q_len - 1 + resp].float().log_softmax(-1)
            lb = pair.base(ids)[:, q_len - 1 : q_len - 1 + resp].float().log_softmax(-1)
            # (rows, resp); KL >= 0, a float sum can land at -1e-9: clamp where the mathematics says so
            kl[rows] = (lt.exp() * (lt - lb)).sum(-1).clamp_min(0).cpu()
    out = []
    for i in range(kl.shape[0]):
        for t in range(int(s.response_mask[i].sum())):
            token = int(response[i, t])
            out.append({"sample": i, "pos": t, "token": pair.tokenizer.decode([token]), "kl": kl[i, t].item()})
    return out
