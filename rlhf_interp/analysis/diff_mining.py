"""`diff_mining`: at every position of the diff corpus (see `adl`) and of the prompts, the top-K tokens by next-token
log-prob difference log p_tuned − log p_base (a per-position constant does not change the ranking, so the compatibility
mode's centred logits are safe), and the tokens ranked by how often they recur in those top-K lists. `count` is the
number of positions where the token is in the top K; `mean_logit_diff` its mean log-prob difference over all positions
read. Suppressed tokens (bottom K) are listed with `direction = suppressed`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from rlhf_interp.analysis.adl import diff_corpus


@torch.no_grad()
def diff_mining(pair: Any, ctx: dict[str, Any], k: int = 10, top: int = 30) -> pd.DataFrame:
    batches = list(diff_corpus(pair, ctx)) + [tokens for _, tokens in pair.prompt_groups()]
    vocab = int(pair.base.cfg.d_vocab)
    counts = {"promoted": torch.zeros(vocab), "suppressed": torch.zeros(vocab)}
    total, n = torch.zeros(vocab), 0
    for tokens in batches:
        d = (pair.tuned(tokens).float().log_softmax(-1) - pair.base(tokens).float().log_softmax(-1)).cpu()
        d = d.reshape(-1, vocab)
        total += d.sum(0)
        n += d.shape[0]
        for direction, largest in (("promoted", True), ("suppressed", False)):
            ids = d.topk(k, dim=-1, largest=largest).indices
            counts[direction] += torch.bincount(ids.flatten(), minlength=vocab).float()
    mean = total / max(n, 1)
    rows = []
    for direction, c in counts.items():
        order = sorted(range(vocab), key=lambda i: (-c[i].item(), -mean[i].item() if direction == "promoted"
                                                    else mean[i].item()))
        for rank, i in enumerate(order[:top]):
            if c[i] == 0:
                break
            rows.append({"direction": direction, "rank": rank, "token_id": i, "token": pair.tokenizer.decode([i]),
                         "count": int(c[i]), "fraction": c[i].item() / n, "mean_logit_diff": mean[i].item(),
                         "positions": n})
    return pd.DataFrame(rows)
