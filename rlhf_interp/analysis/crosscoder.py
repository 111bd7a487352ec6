"""`crosscoder` (opt-in: `--analyses all,crosscoder`): a sparse crosscoder on both models' residual stream at one layer.

One dictionary of latents is read from the base and the tuned residual together and written back to each with its own
decoder (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing"):

    f = act(Σ_m W_enc^m x^m + b_enc),   x̂^m = f W_dec^m + b_dec^m     (m = base, tuned)

- `kind=batchtopk` (default; Minder et al. 2025, "Robustly identifying concepts introduced during chat fine-tuning
  using crosscoders"; BatchTopK of Bussmann et al. 2024): per training batch of B tokens only the k·B largest scores
  f_j · (‖d_j^base‖ + ‖d_j^tuned‖) stay on; loss Σ_m ‖x^m − x̂^m‖² plus the AuxK loss (Gao et al. 2024, weight 1/32)
  that lets dead latents fit the residual error. At inference a latent is on when its score exceeds θ, the mean over
  the training batches of the k·B-th largest score (so L0 ≈ k on average).
- `kind=l1` (the cheaper baseline of Lindsey et al.): ReLU, loss Σ_m ‖x^m − x̂^m‖² + λ Σ_j f_j (‖d_j^base‖ +
  ‖d_j^tuned‖), λ ramped up over the first 5% of steps. Known to make shared concepts look model-specific.

Data: the residual after block `layer` (default n_layers // 2, the layer ADL steers at) on the diff corpus of `adl` /
`diff_mining` (`--diff-corpus FILE`; by default unconditional base samples, `texts` of them: 64 are too few to train a
dictionary) plus the prompts, every position but BOS. Each model's activations are scaled by one constant so that
their mean norm is √d_model (Lindsey et al.; Minder et al. follow), so decoder norms compare across models. A seeded
10% of the texts is held out for FVU.

Per latent (`crosscoder_latents`): decoder norms, relative norm Δ = ½((‖d^t‖ − ‖d^b‖) / max(‖d^t‖, ‖d^b‖) + 1) and its
class (Minder et al.: tuned-only Δ > 0.9, base-only Δ < 0.1, shared 0.4–0.6, else other; dead: never active),
activation frequency, and Latent Scaling (Minder et al.): for latent j with tuned decoder d = d_j^tuned and activation
f_j, β = argmin_β Σ_n ‖β f_j(n) d − y_n‖² = Σ_n f_j(n) (y_n · d) / (‖d‖² Σ_n f_j(n)²) per model m for two targets:
the reconstruction y = x̂^m − b_dec^m (every latent's contribution) and the error y = x^m − x̂^m + f_j d_j^m (what the
reconstruction misses, plus latent j's own part). ν = β^base / β^tuned estimates how much of the latent the base
model carries (NaN for base-only and dead latents: no tuned decoder to scale). A tuned-only latent claims
‖d^b‖/‖d^t‖ < 0.2; when ν^error > 0.2 the concept is in the base activations but not in its decoder
(`complete_shrinkage`), when ν^recon > 0.2 other latents reconstruct it in base (`latent_decoupling`): the two L1
artifacts of Minder et al. (the 0.2 bound is this toolkit's, matched to the class).

For the top tuned-only latents by activation mass Σ_n f_j(n) ‖d_j^tuned‖ (`crosscoder_top`; when there is none, the
tuned-leaning latents with Δ > 0.6, marked by their class): the contexts where they fire most (one per text) and
the tokens their tuned decoder promotes through the tuned model's logit lens (centre(d)/s @ W_U, s its mean final-norm
scale; only roughly what the direction does after the later blocks).
`crosscoder_fvu`: fraction of variance unexplained per model on the training and held-out tokens, L0, dead latents.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from rlhf_interp.analysis.arch import adapter_for
from rlhf_interp.analysis.resid import eps_of
from rlhf_interp.errors import UserError

MODELS = ("base", "tuned")
NU_FLAG = 0.2  # a tuned-only latent claims ‖d^b‖ / ‖d^t‖ < 0.2 (Δ > 0.9); ν above it contradicts the class
AUX_COEF = 1 / 32


@dataclass(frozen=True)
class CrosscoderConfig:
    kind: str = "batchtopk"
    """batchtopk (Minder et al. 2025) or l1 (Lindsey et al. 2024)."""
    layer: int | None = None
    """Residual stream after this block (blocks.L.hook_resid_post); default n_layers // 2."""
    latents: int | None = None
    """Dictionary size; default 4 × d_model."""
    k: int = 16
    """BatchTopK: active latents per token, on average over each batch."""
    l1: float = 0.5
    """L1 coefficient λ (kind=l1)."""
    steps: int = 2000
    batch: int = 256
    """Tokens per training step."""
    lr: float = 1e-3
    texts: int = 512
    """Unconditional base samples drawn as the corpus when no --diff-corpus is given."""
    top_latents: int = 10
    contexts: int = 5
    tokens: int = 10
    """Decoder-promoted tokens listed per top latent."""
    seed: int | None = None
    """Default: compare's --seed."""


def parse_config(spec: str | dict[str, Any] | CrosscoderConfig | None) -> CrosscoderConfig:
    """`--crosscoder "kind=l1,steps=500"` (or a dict) -> CrosscoderConfig; a UserError naming the bad key/value."""
    if isinstance(spec, CrosscoderConfig):
        return spec
    items: dict[str, Any] = dict(spec) if isinstance(spec, dict) else {}
    if isinstance(spec, str):
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise UserError(f"--crosscoder: expected KEY=VALUE, got {part!r}")
            items[key.strip().replace("-", "_")] = value.strip()
    fields = {f.name: f for f in dataclasses.fields(CrosscoderConfig)}
    values: dict[str, Any] = {}
    for key, value in items.items():
        if key not in fields:
            raise UserError(f"--crosscoder: unknown key {key!r}; keys: {', '.join(fields)}")
        typ = float if key in ("l1", "lr") else str if key == "kind" else int
        try:
            values[key] = None if value is None else typ(value)
        except (TypeError, ValueError):
            raise UserError(f"--crosscoder: {key}={value!r} is not a{'n integer' if typ is int else ' number'}"
                            ) from None
    cfg = CrosscoderConfig(**values)
    if cfg.kind not in ("batchtopk", "l1"):
        raise UserError(f"--crosscoder: kind={cfg.kind!r}; choose batchtopk or l1")
    for key in ("k", "steps", "batch", "texts", "top_latents", "contexts", "tokens", "latents"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise UserError(f"--crosscoder: {key} must be at least 1")
    if not (cfg.l1 >= 0 and cfg.lr > 0 and math.isfinite(cfg.l1) and math.isfinite(cfg.lr)):
        raise UserError("--crosscoder: l1 must be >= 0 and lr > 0")
    return cfg


class Crosscoder(nn.Module):
    """Acausal two-model crosscoder on one layer. x: (batch, model, d_model) -> latents (batch, latent)."""

    def __init__(self, d_model: int, n_latents: int, kind: str, k: int, generator: torch.Generator):
        super().__init__()
        self.kind, self.k = kind, k
        dec = torch.randn(n_latents, 2, d_model, generator=generator)
        dec = 0.1 * dec / dec.norm(dim=-1, keepdim=True)  # every decoder vector of norm 0.1, encoder = its transpose
        self.W_dec = nn.Parameter(dec)  # (latent, model, d_model)
        self.W_enc = nn.Parameter(dec.permute(1, 2, 0).clone())  # (model, d_model, latent)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(2, d_model))
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def dec_norms(self) -> Tensor:
        return self.W_dec.norm(dim=-1)  # (latent, model)

    def pre(self, x: Tensor) -> Tensor:
        return torch.relu(torch.einsum("bmd,mdl->bl", x, self.W_enc) + self.b_enc)

    def scores(self, f_pre: Tensor) -> Tensor:
        return f_pre * self.dec_norms().sum(-1)

    def encode(self, x: Tensor, train: bool = False) -> Tensor:
        return self.select(self.pre(x), train)

    def select(self, f: Tensor, train: bool = False) -> Tensor:
        """Latent activations from the pre-activations f (batch, latent): L1 keeps them; BatchTopK keeps the k·B
        largest scores of the batch in training and the scores above θ at inference."""
        if self.kind == "l1":
            return f
        s = self.scores(f)
        if train:
            keep = s.flatten().topk(min(self.k * f.shape[0], s.numel())).indices
            mask = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
            mask[keep] = True
            return f * (mask.view_as(f) & (s > 0))
        return f * (s > self.threshold)

    def decode(self, f: Tensor) -> Tensor:
        return torch.einsum("bl,lmd->bmd", f, self.W_dec) + self.b_dec


def train_crosscoder(x: Tensor, cfg: CrosscoderConfig, n_latents: int, seed: int) -> tuple[Crosscoder, Tensor]:
    """Train on activations x (tokens, 2, d_model) (already normalised); returns the model and the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    cc = Crosscoder(x.shape[-1], n_latents, cfg.kind, cfg.k, gen).to(x.device)
    with torch.no_grad():
        cc.b_dec.copy_(x.mean(0))
    opt = torch.optim.Adam(cc.parameters(), lr=cfg.lr)
    decay_from = int(0.8 * cfg.steps)  # linear decay of the rate to 0 over the last 20% of steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (cfg.steps - s) / max(1, cfg.steps - decay_from)))
    batch = min(cfg.batch, x.shape[0])
    order, at = torch.randperm(x.shape[0], generator=gen), 0
    last_active = torch.zeros(n_latents, dtype=torch.long)
    dead_after = max(1, -(-x.shape[0] // batch))  # a latent silent for one epoch counts as dead (AuxK)
    losses = torch.empty(cfg.steps)
    with torch.enable_grad():
        for step in range(cfg.steps):
            if at + batch > x.shape[0]:
                order, at = torch.randperm(x.shape[0], generator=gen), 0
            xb = x[order[at:at + batch].to(x.device)]
            at += batch
            p = cc.pre(xb)
            f = cc.select(p, train=True)
            x_hat = cc.decode(f)
            err = xb - x_hat
            loss = err.pow(2).sum((1, 2)).mean()
            if cfg.kind == "l1":
                lam = cfg.l1 * min(1.0, (step + 1) / max(1, int(0.05 * cfg.steps)))
                loss = loss + lam * (f * cc.dec_norms().sum(-1)).sum(-1).mean()
            else:
                last_active[(f > 0).any(0).cpu()] = step
                dead = (step - last_active >= dead_after).to(x.device)
                if dead.any():  # AuxK: the top-k_aux dead latents of each token fit the (fixed) error
                    p_dead = p * dead
                    top = cc.scores(p_dead).topk(min(int(dead.sum()), 2 * cfg.k), dim=-1).indices
                    f_aux = torch.zeros_like(p).scatter(-1, top, p_dead.gather(-1, top))
                    aux = torch.einsum("bl,lmd->bmd", f_aux, cc.W_dec)
                    loss = loss + AUX_COEF * (err.detach() - aux).pow(2).sum((1, 2)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(cc.parameters(), 1.0)
            opt.step()
            sched.step()
            losses[step] = loss.detach()
    if cfg.kind == "batchtopk":  # θ: mean over training-sized batches of the k·B-th largest score
        with torch.no_grad():
            kth = []
            for i in range(0, x.shape[0] - batch + 1, batch):
                s = cc.scores(cc.pre(x[i:i + batch])).flatten()
                kth.append(s.topk(min(cfg.k * batch, s.numel())).values[-1])
            cc.threshold.fill_(torch.stack(kth).mean().item())
    return cc, losses


@torch.no_grad()
def encode_all(cc: Crosscoder, x: Tensor, chunk: int = 4096) -> Tensor:
    return torch.cat([cc.encode(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


@torch.no_grad()
def latent_scaling(cc: Crosscoder, x: Tensor, f: Tensor, chunk: int = 4096) -> dict[str, Tensor]:
    """Closed-form Latent Scaling betas per latent along its tuned decoder direction (see the module docstring):
    {"recon_base", "recon_tuned", "error_base", "error_tuned"}, each (latent,); NaN where a latent never fires."""
    d = cc.W_dec[:, 1]  # (latent, d_model): the tuned decoder
    dd = d.pow(2).sum(-1)
    own = torch.einsum("lmd,ld->lm", cc.W_dec, d)  # d_j^m · d_j
    num = {key: torch.zeros(d.shape[0], dtype=torch.float64, device=x.device) for key in
           ("recon_base", "recon_tuned", "error_base", "error_tuned")}
    ff = torch.zeros(d.shape[0], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], chunk):
        xb, fb = x[i:i + chunk], f[i:i + chunk]
        recon = torch.einsum("bl,lmd->bmd", fb, cc.W_dec)  # x̂ − b_dec
        err = xb - recon - cc.b_dec
        for m, name in enumerate(MODELS):
            num[f"recon_{name}"] += (fb * (recon[:, m] @ d.T)).sum(0).double()
            num[f"error_{name}"] += (fb * (err[:, m] @ d.T) + fb.pow(2) * own[:, m]).sum(0).double()
        ff += fb.pow(2).sum(0).double()
    denom = ff * dd.double()
    return {key: torch.where(denom > 0, v / denom.clamp_min(1e-30), float("nan")).float() for key, v in num.items()}


def classify(rel_norm: Tensor, freq: Tensor) -> list[str]:
    """Minder et al.'s classes by relative decoder norm; `dead` for latents that never fire."""
    out = []
    for r, fr in zip(rel_norm.tolist(), freq.tolist(), strict=True):
        out.append("dead" if fr == 0 else "tuned-only" if r > 0.9 else "base-only" if r < 0.1
                   else "shared" if 0.4 <= r <= 0.6 else "other")
    return out


def latent_table(cc: Crosscoder, x: Tensor, f: Tensor) -> pd.DataFrame:
    norms = cc.dec_norms().detach()
    nb, nt = norms[:, 0], norms[:, 1]
    big = torch.maximum(nb, nt)
    rel = torch.where(big > 0, 0.5 * ((nt - nb) / big.clamp_min(1e-30) + 1), float("nan"))
    cos = nn.functional.cosine_similarity(cc.W_dec[:, 0], cc.W_dec[:, 1], dim=-1).detach()
    active = f > 0
    freq = active.float().mean(0)
    mean_act = torch.where(active.any(0), f.sum(0) / active.sum(0).clamp_min(1), 0.0)
    classes = classify(rel, freq)
    undefined = torch.tensor([c in ("base-only", "dead") for c in classes], device=x.device)
    betas = {k: v.masked_fill(undefined, float("nan")) for k, v in latent_scaling(cc, x, f).items()}
    nu_r, nu_e = betas["recon_base"] / betas["recon_tuned"], betas["error_base"] / betas["error_tuned"]
    artifacts = []
    for c, r, e in zip(classes, nu_r.tolist(), nu_e.tolist(), strict=True):
        flags = [name for name, v in (("complete_shrinkage", e), ("latent_decoupling", r)) if v > NU_FLAG]
        artifacts.append("+".join(flags) if c == "tuned-only" else "")
    return pd.DataFrame({
        "latent": range(len(nb)), "norm_base": nb.cpu().numpy(), "norm_tuned": nt.cpu().numpy(),
        "rel_norm": rel.cpu().numpy(), "cos_base_tuned": cos.cpu().numpy(), "class": classes,
        "freq": freq.cpu().numpy(), "mean_act": mean_act.cpu().numpy(),
        "mass_tuned": (f.sum(0) * nt).cpu().numpy(),
        **{f"beta_{k}": v.cpu().numpy() for k, v in betas.items()},
        "nu_recon": nu_r.cpu().numpy(), "nu_error": nu_e.cpu().numpy(), "artifact": artifacts})


def fvu_rows(cc: Crosscoder, x: Tensor, split: str) -> list[dict[str, Any]]:
    f = encode_all(cc, x)
    x_hat = torch.cat([cc.decode(f[i:i + 4096]) for i in range(0, x.shape[0], 4096)])
    rows = []
    for m, name in enumerate(MODELS):
        resid = (x[:, m] - x_hat[:, m]).pow(2).sum()
        var = (x[:, m] - x[:, m].mean(0)).pow(2).sum()
        rows.append({"model": name, "split": split, "fvu": (resid / var).item() if var > 0 else float("nan"),
                     "l0": (f > 0).float().sum(-1).mean().item(), "tokens": x.shape[0]})
    return rows


# ---- the analysis on a loaded pair -------------------------------------------------------------------------------

def corpus(pair: Any, ctx: dict[str, Any], cfg: CrosscoderConfig) -> list[list[int]]:
    """Token sequences (each starting with BOS): the diff corpus (the file's lines, or `texts` base samples) and the
    prompts."""
    from rlhf_interp.analysis.adl import diff_corpus

    if ctx.get("diff_corpus"):
        batches = diff_corpus(pair, ctx)  # the file, shared with adl / diff_mining
    else:
        batches = diff_corpus(pair, {"seed": ctx.get("seed", 0), "new_tokens": ctx.get("new_tokens", 32)},
                              n_samples=cfg.texts)
        pair.release_hf()
    return [row.tolist() for b in [*batches, *(t for _, t in pair.prompt_groups())] for row in b]  # prompts alone


@torch.no_grad()
def collect(pair: Any, seqs: list[list[int]], layer: int) -> tuple[Tensor, Tensor, float]:
    """Residuals after block `layer` of both models at every position but BOS: x (tokens, 2, d_model), the (text,
    pos) of each row, and the tuned model's mean final-norm scale at those positions."""
    name, last = f"blocks.{layer}.hook_resid_post", f"blocks.{pair.n_layers - 1}.hook_resid_post"
    arch, eps = adapter_for(pair.tuned), eps_of(pair.tuned)
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    xs, where, scale, n = [], [], 0.0, 0
    for length, idx in sorted(by_len.items()):
        for j in range(0, len(idx), 64):
            rows = idx[j:j + 64]
            tokens = torch.tensor([seqs[i] for i in rows], device=pair.device)
            acts = []
            for model in (pair.base, pair.tuned):
                _, cache = model.run_with_cache(tokens, names_filter=lambda h: h in (name, last))
                acts.append(cache[name][:, 1:].float())
            fin = cache[last][:, 1:].float()
            scale += arch.norm_scale(fin, eps).sum().item()
            n += fin.shape[0] * fin.shape[1]
            xs.append(torch.stack(acts, 2).reshape(-1, 2, acts[0].shape[-1]))
            where += [(i, p) for i in rows for p in range(1, length)]
    return torch.cat(xs), torch.tensor(where, dtype=torch.long), scale / max(n, 1)


def top_table(pair: Any, cc: Crosscoder, latents: pd.DataFrame, f: Tensor, where: Tensor, seqs: list[list[int]],
              scales: Tensor, final_scale: float, cfg: CrosscoderConfig) -> pd.DataFrame:
    tok = pair.tokenizer
    W_U = pair.tuned.W_U.detach().float()
    centres = adapter_for(pair.tuned).centres
    live = latents[latents["class"] == "tuned-only"]
    if live.empty:  # no tuned-only latent: the most tuned-leaning ones instead, marked by their class
        live = latents[(latents["class"] == "other") & (latents.rel_norm > 0.6)]
    live = live.sort_values(["mass_tuned", "latent"], ascending=[False, True]).set_index("latent")
    rows: list[dict[str, Any]] = []
    for rank, j in enumerate(live.index[:cfg.top_latents].tolist()):
        r = live.loc[j]
        base = {"latent": j, "latent_rank": rank, "class": r["class"], "rel_norm": r.rel_norm, "artifact": r.artifact}
        order = f[:, j].argsort(descending=True, stable=True)
        seen: set[int] = set()
        for i in order.tolist():
            if f[i, j] <= 0 or len(seen) >= cfg.contexts:
                break
            text, pos = where[i].tolist()
            if text in seen:
                continue
            seen.add(text)
            s = seqs[text]
            context = tok.decode(s[max(1, pos - 8):pos]) + "«" + tok.decode([s[pos]]) + "»" + tok.decode(
                s[pos + 1:pos + 3])
            rows.append({**base, "kind": "context", "rank": len(seen) - 1, "token_id": s[pos],
                         "token": tok.decode([s[pos]]), "value": f[i, j].item(), "context": context})
        d = cc.W_dec[j, 1].detach() / scales[1]  # back to the tuned model's units
        d = d - d.mean() if centres else d
        logits = (d / final_scale) @ W_U.to(d.device)
        for r, t in enumerate(logits.topk(min(cfg.tokens, logits.numel())).indices.tolist()):
            rows.append({**base, "kind": "promoted", "rank": r, "token_id": t, "token": tok.decode([t]),
                         "value": logits[t].item(), "context": ""})
    cols = ["latent", "latent_rank", "class", "rel_norm", "artifact", "kind", "rank", "token_id", "token", "value",
            "context"]
    return pd.DataFrame(rows, columns=cols)


def crosscoder(pair: Any, ctx: dict[str, Any]) -> dict[str, pd.DataFrame]:
    cfg = parse_config(ctx.get("crosscoder"))
    layer = pair.n_layers // 2 if cfg.layer is None else cfg.layer
    if not 0 <= layer < pair.n_layers:
        raise UserError(f"--crosscoder: layer={layer} is outside 0..{pair.n_layers - 1}")
    d_model = int(pair.base.cfg.d_model)
    n_latents = cfg.latents or 4 * d_model
    if cfg.kind == "batchtopk" and cfg.k > n_latents:
        raise UserError(f"--crosscoder: k={cfg.k} exceeds latents={n_latents}")
    seed = ctx.get("seed", 0) if cfg.seed is None else cfg.seed
    seqs = corpus(pair, ctx, cfg)
    x, where, final_scale = collect(pair, seqs, layer)
    scales = math.sqrt(d_model) / x.norm(dim=-1).mean(0)  # (model,): mean norm √d_model per model
    x = x * scales[None, :, None]
    gen = torch.Generator().manual_seed(seed)
    n_texts = len(seqs)
    held = torch.zeros(n_texts, dtype=torch.bool)
    if n_texts >= 10:
        held[torch.randperm(n_texts, generator=gen)[: n_texts // 10]] = True
    train_rows = ~held[where[:, 0]]
    x_train = x[train_rows.to(x.device)]
    if x_train.shape[0] < 64:
        raise UserError(f"crosscoder: only {x_train.shape[0]} training tokens; pass a longer --diff-corpus file or "
                        "more texts (--crosscoder texts=N)")
    batch = min(cfg.batch, x_train.shape[0])
    say = ctx.get("say")
    if say is not None:
        what = f"BatchTopK k={cfg.k}" if cfg.kind == "batchtopk" else f"L1 λ={cfg.l1:g}"
        say(f"crosscoder: {what}, {n_latents} latents on blocks.{layer}.hook_resid_post of both models; "
            f"{x_train.shape[0]:,} training tokens from {int((~held).sum())} texts, {cfg.steps:,} steps of {batch} "
            f"tokens ({cfg.steps * batch / x_train.shape[0]:.1f} epochs); --crosscoder steps=N,texts=N to change")
    cc, losses = train_crosscoder(x_train, cfg, n_latents, seed)
    f = encode_all(cc, x)
    latents = latent_table(cc, x, f)
    meta = {"kind": cfg.kind, "layer": layer, "latents": n_latents,
            "k": cfg.k if cfg.kind == "batchtopk" else float("nan"), "l1": cfg.l1 if cfg.kind == "l1" else float("nan"),
            "steps": cfg.steps, "batch": batch,
            "dead_fraction": float((latents["class"] == "dead").mean()), "final_loss": losses[-1].item()}
    fvu = fvu_rows(cc, x_train, "train") + (fvu_rows(cc, x[~train_rows.to(x.device)], "heldout")
                                            if (~train_rows).any() else [])
    latents.insert(0, "layer", layer)
    latents.insert(1, "kind", cfg.kind)
    ctx["crosscoder_model"] = cc
    return {"crosscoder_latents": latents,
            "crosscoder_top": top_table(pair, cc, latents, f, where, seqs, scales, final_scale, cfg),
            "crosscoder_fvu": pd.DataFrame([{**r, **meta} for r in fvu])}
