"""The crosscoder analysis: a planted tuned-only feature is recovered, BatchTopK keeps k per token, Latent Scaling
gives the planted betas, and it runs from compare (opt-in)."""

import math

import pandas as pd
import pytest
import torch
from helpers import plant_head

from rlhf_interp.analysis import compare, parse_analyses
from rlhf_interp.analysis.crosscoder import (
    Crosscoder,
    CrosscoderConfig,
    encode_all,
    latent_scaling,
    latent_table,
    parse_config,
    train_crosscoder,
)
from rlhf_interp.errors import UserError
from rlhf_interp.io import read_table
from rlhf_interp.models import EMBEDDED_DIR
from rlhf_interp.prompts import EMBEDDED_PROMPTS

D, N_SHARED = 32, 40


def synthetic(n: int = 8000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse features in two 'models': N_SHARED shared directions, one only in tuned (index N_SHARED) and one only
    in base (index N_SHARED + 1); x (n, 2, D) normalised to mean norm √D per model as the analysis does."""
    g = torch.Generator().manual_seed(seed)
    U = torch.nn.functional.normalize(torch.randn(N_SHARED + 2, D, generator=g), dim=-1)
    on = torch.rand(n, N_SHARED + 2, generator=g) < 0.06
    a = on * (0.5 + torch.rand(n, N_SHARED + 2, generator=g)) * 3
    shared = a[:, :N_SHARED] @ U[:N_SHARED]
    base = shared + a[:, N_SHARED + 1:] @ U[N_SHARED + 1:]
    tuned = shared + a[:, N_SHARED:N_SHARED + 1] @ U[N_SHARED:N_SHARED + 1]
    x = torch.stack([base, tuned], 1) + 0.01 * torch.randn(n, 2, D, generator=g)
    return x * (math.sqrt(D) / x.norm(dim=-1).mean(0))[None, :, None], U


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module", params=["batchtopk", "l1"])
def trained(request, data):
    x, _ = data
    cfg = CrosscoderConfig(kind=request.param, k=4, steps=1200, batch=256)
    cc, losses = train_crosscoder(x, cfg, 128, seed=0)
    f = encode_all(cc, x)
    return cc, f, latent_table(cc, x, f), losses


def _best(cc: Crosscoder, u: torch.Tensor, model: int) -> tuple[int, float]:
    cos = torch.nn.functional.normalize(cc.W_dec[:, model].detach(), dim=-1) @ u
    return int(cos.argmax()), float(cos.max())


def test_planted_tuned_only_feature_is_recovered_and_shared_ones_are_shared(trained, data):
    cc, _, lt, losses = trained
    _, U = data
    assert losses[-100:].mean() < 0.2 * losses[:10].mean()
    j, cos = _best(cc, U[N_SHARED], 1)
    assert cos > 0.9 and lt.loc[j, "class"] == "tuned-only", (cos, lt.loc[j].to_dict())
    assert lt.loc[j, "nu_error"] < 0.2 and lt.loc[j, "nu_recon"] < 0.2 and lt.loc[j, "artifact"] == ""
    j, cos = _best(cc, U[N_SHARED + 1], 0)
    assert cos > 0.9 and lt.loc[j, "class"] == "base-only"
    shared_ok = 0
    for i in range(N_SHARED):
        j, cos_t = _best(cc, U[i], 1)
        cos_b = float(torch.nn.functional.normalize(cc.W_dec[j, 0].detach(), dim=0) @ U[i])
        assert lt.loc[j, "class"] not in ("tuned-only", "base-only"), (i, lt.loc[j].to_dict())
        shared_ok += cos_t > 0.9 and cos_b > 0.9 and lt.loc[j, "class"] == "shared"
    assert shared_ok >= 0.9 * N_SHARED, shared_ok
    assert (lt["class"] == "tuned-only").sum() <= 3  # no crowd of spurious model-specific latents


@pytest.mark.parametrize("trained", ["batchtopk"], indirect=True)
def test_batchtopk_keeps_k_per_token_on_average(trained, data):
    cc, f, _, _ = trained
    x, _ = data
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(5):  # training mode: exactly k·B latents on in every batch
            xb = x[torch.randint(0, x.shape[0], (256,), generator=g)]
            on = (cc.encode(xb, train=True) > 0).sum().item()
            assert on == cc.k * 256
            per_token = (cc.encode(xb, train=True) > 0).sum(-1).float()
            assert per_token.std() > 0  # per batch, not per token
    l0 = (f > 0).sum(-1).float().mean().item()  # inference: the threshold θ keeps k on average
    assert abs(l0 - cc.k) < 0.25 * cc.k, l0


def _hand_made(d: int = 16, n_tokens: int = 4000, seed: int = 0):
    """A crosscoder with orthonormal decoders and activations chosen by hand:
    latent 0: in both models' data (base at half strength) but its base decoder is zero (complete shrinkage);
    latent 1: its base decoder is zero, and base-only latent 2 (same activations) writes its direction in base
    (latent decoupling); latents 3-5: shared."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:6]
    cc = Crosscoder(d, 6, "l1", 1, g)
    with torch.no_grad():
        cc.W_dec.copy_(torch.stack([Q, Q], 1))
        cc.W_dec[0, 0] = 0
        cc.W_dec[1, 0] = 0
        cc.W_dec[2, 0] = Q[1]
        cc.W_dec[2, 1] = 0
        cc.b_dec.zero_()
    f = torch.rand(n_tokens, 6, generator=g) * (torch.rand(n_tokens, 6, generator=g) < 0.3)
    f[:, 2] = f[:, 1]
    noise = 0.05 * torch.randn(n_tokens, 2, d, generator=g)
    tuned = f[:, [0, 1, 3, 4, 5]] @ Q[[0, 1, 3, 4, 5]]
    base = 0.5 * f[:, :1] @ Q[:1] + f[:, 2:] @ Q[[1, 3, 4, 5]]
    return cc, torch.stack([base, tuned], 1) + noise, f, Q


def test_latent_scaling_gives_the_planted_betas():
    cc, x, f, _ = _hand_made()
    b = latent_scaling(cc, x, f)
    assert b["error_base"][0].item() == pytest.approx(0.5, abs=0.02)
    assert b["error_tuned"][0].item() == pytest.approx(1.0, abs=0.02)
    assert abs(b["recon_base"][0].item()) < 0.02 and b["recon_tuned"][0].item() == pytest.approx(1.0, abs=0.02)
    assert b["recon_base"][1].item() == pytest.approx(1.0, abs=0.02)  # other latents rebuild it in base
    assert abs(b["error_base"][1].item()) < 0.02
    # independent check: least squares of y (tokens·d) on the single regressor f_j(n) d_j, for every target
    j, m = 0, 0
    d = cc.W_dec[j, 1].detach()
    recon = torch.einsum("bl,lmd->bmd", f, cc.W_dec.detach())
    for key, y in (("error_base", x[:, m] - recon[:, m] + f[:, j:j + 1] * cc.W_dec[j, m].detach()),
                   ("recon_base", recon[:, m]), ("error_tuned", x[:, 1] - recon[:, 1] + f[:, j:j + 1] * d)):
        A = (f[:, j:j + 1] * d).reshape(-1, 1).double()
        ref = torch.linalg.lstsq(A, y.reshape(-1, 1).double()).solution.item()
        assert b[key][j].item() == pytest.approx(ref, rel=1e-4, abs=1e-6), key
    lt = latent_table(cc, x, f).set_index("latent")
    assert list(lt["class"][:3]) == ["tuned-only", "tuned-only", "base-only"]
    assert lt.artifact[0] == "complete_shrinkage" and lt.nu_error[0] == pytest.approx(0.5, abs=0.02)
    assert lt.artifact[1] == "latent_decoupling" and lt.nu_recon[1] == pytest.approx(1.0, abs=0.02)
    assert set(lt["class"][3:]) == {"shared"} and (lt.artifact[2:] == "").all()
    assert lt.beta_error_base[2:3].isna().all()  # base-only: no tuned decoder to scale
    assert lt.nu_error[3:].sub(1).abs().max() < 0.05  # shared latents: base carries them fully


def test_training_is_seeded_and_deterministic(data):
    x, _ = data
    cfg = CrosscoderConfig(k=4, steps=60, batch=128)
    runs = [train_crosscoder(x[:2000], cfg, 64, seed=3)[0] for _ in range(2)]
    assert torch.equal(runs[0].W_dec, runs[1].W_dec) and torch.equal(runs[0].threshold, runs[1].threshold)
    other = train_crosscoder(x[:2000], cfg, 64, seed=4)[0]
    assert not torch.equal(runs[0].W_dec, other.W_dec)


def test_settings_are_checked():
    assert parse_config("kind=l1, steps=10,layer=1") == CrosscoderConfig(kind="l1", steps=10, layer=1)
    for bad, needle in (("kind=topk", "kind="), ("step=3", "unknown key 'step'"), ("k=x", "not an integer"),
                        ("steps", "KEY=VALUE"), ("k=0", "at least 1")):
        with pytest.raises(UserError, match=needle):
            parse_config(bad)
    assert "crosscoder" not in parse_analyses("all") and "crosscoder" not in parse_analyses(None)
    assert parse_analyses("all,crosscoder")[-1] == "crosscoder" and parse_analyses("crosscoder") == ["crosscoder"]


def test_crosscoder_runs_from_compare_and_writes_its_tables(tmp_path):
    tuned = plant_head(EMBEDDED_DIR, tmp_path / "planted", 2, 1)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="layer=9"):
        compare("embedded", str(tuned), prompts=list(EMBEDDED_PROMPTS)[:4], analyses="crosscoder",
                crosscoder="layer=9,steps=5", report=False)
    tables = compare("embedded", str(tuned), prompts=list(EMBEDDED_PROMPTS)[:4], analyses="crosscoder", out=out,
                     crosscoder="steps=150,texts=40,latents=128,k=8")
    for name in ("crosscoder_latents", "crosscoder_top", "crosscoder_fvu"):
        disk = read_table(out / "tables" / f"{name}.csv")
        assert len(disk) == len(tables[name]) and list(disk.columns) == list(tables[name].columns)
    lt, fvu = tables["crosscoder_latents"], tables["crosscoder_fvu"]
    assert len(lt) == 128 and set(lt["class"]) <= {"tuned-only", "base-only", "shared", "other", "dead"}
    assert (lt.layer == 2).all() and lt.freq.between(0, 1).all()
    assert set(fvu.model) == {"base", "tuned"} and set(fvu.split) == {"train", "heldout"}
    assert (fvu.fvu < 0.5).all() and fvu.l0.between(4, 12).all()  # it learned something, and k holds roughly
    top = tables["crosscoder_top"]
    if len(top):
        assert set(top.kind) == {"context", "promoted"} and top[top.kind == "context"].context.str.contains("«").all()
    assert (out / "figures" / "crosscoder.png").is_file()
    html = (out / "report.html").read_text()
    assert "Crosscoder (BatchTopK k=8, 128 latents, residual after block 2" in html
    pd.testing.assert_frame_equal(read_table(out / "tables" / "crosscoder_fvu.csv"), tables["crosscoder_fvu"],
                                  check_dtype=False)


def test_the_budget_is_stated_before_training():
    from rlhf_interp.analysis import open_pair
    from rlhf_interp.analysis.crosscoder import crosscoder

    pair = open_pair("embedded", "embedded", prompts=list(EMBEDDED_PROMPTS)[:2])
    said: list[str] = []
    ctx = {"seed": 0, "new_tokens": 8, "crosscoder": "kind=l1,steps=20,texts=12,latents=64", "say": said.append}
    tables = crosscoder(pair, ctx)
    assert len(said) == 1 and said[0].startswith("crosscoder: L1 λ=0.5, 64 latents on blocks.2.hook_resid_post")
    n = int(tables["crosscoder_fvu"].query("split == 'train'").tokens.iloc[0])
    assert f"{n:,} training tokens" in said[0] and "20 steps of" in said[0]
