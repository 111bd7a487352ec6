"""`rlhf-interp train`: PPO for RLHF on a causal LM, in the order the algorithm runs.

    for each update:
        rollout      sample responses; old log-probs and values from the sampling passes; reference log-probs
        score        the reward on the decoded text (+ optional missing-EOS penalty, optional score whitening)
        shape        per-token reward = -beta * KL_t, plus the score at the last response token
        advantages   GAE(gamma, lambda) with the rollout's values; whitened over valid tokens
        optimise     ppo_epochs x reshuffled minibatches: clipped policy loss + vf_coef * clipped value loss
                     - ent_coef * entropy; gradient clipping; non-finite steps skipped
        adapt        the KL coefficient (if adaptive)
        log / save   metrics.csv, samples.jsonl, eval.csv; atomic checkpoint every save_every updates

The policy is a plain `transformers` model kept in eval mode (dropout off) throughout; gradients still flow.
On several processes (torchrun) each rank rolls out its share of the batch and the statistics are global; see
`rlhf_interp.ppo.distributed`.
"""

from __future__ import annotations

import copy
import dataclasses
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from rlhf_interp.errors import UserError
from rlhf_interp.faults import maybe_die
from rlhf_interp.io import recover_dir
from rlhf_interp.models import load_causal_lm, resolve_device, resolve_model_spec, save_model
from rlhf_interp.ppo import core, distributed, lora
from rlhf_interp.ppo.checkpoint import load_checkpoint, optimizer_from_flat, save_checkpoint
from rlhf_interp.ppo.config import TrainConfig
from rlhf_interp.ppo.distributed import Dist
from rlhf_interp.ppo.evaluation import evaluate_policy, split_prompts
from rlhf_interp.ppo.loggers import make_logger
from rlhf_interp.ppo.rollout import Rollout, collect_rollout, forward_response, reward_texts
from rlhf_interp.ppo.rundir import RunFiles
from rlhf_interp.ppo.value_head import ValueHead, hidden_size
from rlhf_interp.progress import progress_bar
from rlhf_interp.prompts import default_prompts, load_prompts
from rlhf_interp.rewards import RewardError, check_scores, get_reward
from rlhf_interp.sampling import check_fits_context, prompt_token_ids
from rlhf_interp.text_stats import distinct_n, repetition_rate


@dataclass
class TrainerState:
    """What changes from update to update besides the weights (all JSON-able)."""

    step: int = 0
    kl_coef: float = 0.0
    score_moments: dict[str, float] = field(default_factory=dict)
    bad_updates: int = 0
    elapsed_s: float = 0.0


class PolicyAndValue(nn.Module):
    """The policy and its value head as one module: one forward for the PPO loss, one DDP wrapper for both."""

    def __init__(self, policy: nn.Module, value_head: ValueHead, cfg: TrainConfig) -> None:
        super().__init__()
        self.policy, self.value_head, self.cfg = policy, value_head, cfg

    def forward(self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor) -> tuple[Tensor, Tensor]:
        """-> filtered logits (batch, resp, vocab) and values (batch, resp) at the response positions."""
        logits, hidden = forward_response(self.policy, query_ids, query_mask, response_ids, self.cfg,
                                          output_hidden=True)
        assert hidden is not None
        return logits, self.value_head(hidden)


class PPOTrainer:
    """Holds the models, optimizer and generators of one run; `train()` runs the loop."""

    def __init__(self, cfg: TrainConfig, files: RunFiles, dist: Dist | None = None,
                 device: torch.device | None = None) -> None:
        self.cfg, self.files = cfg, files
        self.dist = dist or Dist()
        self.device = device or resolve_device(cfg.device)
        self.local_batch = distributed.check_batch(cfg.batch_size, cfg.minibatches, self.dist.world)
        files.write = self.dist.is_main  # only rank 0 writes files
        source = resolve_model_spec(cfg.model)
        prompts = load_prompts(cfg.prompts) if cfg.prompts else None
        self.reward_fn = get_reward(cfg.reward, label=cfg.classifier_label, output=cfg.classifier_output)
        self.policy, self.tokenizer = load_causal_lm(source, device=str(self.device))
        all_prompts = prompts or default_prompts(self.tokenizer)
        if cfg.eval_prompts:  # evaluation on a file of its own; train on every prompt
            self.prompts, self.eval_prompts = all_prompts, load_prompts(cfg.eval_prompts)
        else:  # a held-out split of the prompts, never trained on (fraction 0 or one prompt: the training prompts)
            self.prompts, self.eval_prompts = split_prompts(all_prompts, cfg.eval_fraction)
        for group in (self.prompts, self.eval_prompts):
            lengths = [len(prompt_token_ids(self.tokenizer, p)) for p in group]
            check_fits_context(self.policy, group, lengths, cfg.response_length)
        # the frozen reference: the base model, never updated  # KL against the frozen base: N details #4
        if cfg.lora_r:  # LoRA: the reference is the same model with its adapters off (no second copy)
            self.policy = lora.apply_lora(self.policy, cfg)
            self.ref: nn.Module = lora.AdaptersOff(self.policy)
        else:
            self.ref = copy.deepcopy(self.policy).eval().requires_grad_(False)
        # what is saved: the policy itself, or with LoRA its merged weights (+ the adapters in the checkpoint)
        self.export = lora.Merged(self.policy) if cfg.lora_r else self.policy
        self.export_ckpt = lora.Merged(self.policy, with_adapters=True) if cfg.lora_r else self.policy
        self.value_head = ValueHead(hidden_size(self.policy)).to(self.device)
        self.model = PolicyAndValue(self.policy, self.value_head, cfg)
        # several processes: DDP all-reduces (averages) the gradients of policy and value head in backward()
        self.ddp: nn.Module = self.model
        if self.dist.active:
            self.ddp = DistributedDataParallel(self.model,
                                               device_ids=[self.device] if self.device.type == "cuda" else None)
        # separate learning rates for body and head  # N details #9
        self.opt = torch.optim.AdamW(
            [
                {"params": [p for p in self.policy.parameters() if p.requires_grad], "lr": cfg.lr},
                {"params": list(self.value_head.parameters()), "lr": cfg.value_lr},
            ],
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            foreach=True,  # one multi-tensor kernel per step instead of a Python loop over parameters
        )
        self.kl_ctl = core.KLController(cfg.kl_coef, cfg.target_kl if cfg.adaptive_kl else None, cfg.kl_horizon)
        self.moments = core.RunningMoments()
        self.state = TrainerState(kl_coef=cfg.kl_coef)
        # one generator per purpose, so that resuming restores each stream exactly  # seeding: N details #11
        # each rank its own seeds (rank 0 keeps cfg.seed): ranks sample different episodes
        rank = self.dist.rank
        self.generators = {
            "rollout": torch.Generator(device=self.device).manual_seed(distributed.rank_seed(cfg.seed, rank)),
            "shuffle": torch.Generator().manual_seed(distributed.rank_seed(cfg.seed + 1, rank)),
        }
        self.stop_requested = False

    # --- the loop --------------------------------------------------------------------------------------------------
    def train(self, resume: bool) -> dict[str, Any]:
        cfg, files, main = self.cfg, self.files, self.dist.is_main
        if main:
            files.start(cfg)
            files.write_prompts(self.prompts, self.eval_prompts)
            recover_dir(files.checkpoint)
        self.dist.barrier()  # the other ranks read the checkpoint once rank 0 has recovered it
        if resume and files.checkpoint.exists():
            self._load(files.checkpoint)
            files.drop_snapshots_after(self.state.step)
        elif main:
            save_model(self.export, self.tokenizer, files.base)
        if main and cfg.snapshot_every and self.state.step == 0:
            save_model(self.export, self.tokenizer, files.snapshot(0))
        if main and cfg.log != "none":
            files.sink = make_logger(cfg.log, files.root, self.state.step, dataclasses.asdict(cfg), resume)
        try:
            return self._train_loop(files)
        finally:
            if files.sink is not None:
                files.sink.close()
                files.sink = None

    def _train_loop(self, files: RunFiles) -> dict[str, Any]:
        cfg, main = self.cfg, self.dist.is_main
        if not files.evals:  # the "before" numbers
            files.add_eval(0, self._evaluate())
        try:  # Ctrl-C finishes the current update and saves (only possible from the main thread)
            previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        except ValueError:
            previous_handler = None
        try:
            with progress_bar(disable=None if main else True) as bar:
                task = bar.add_task("train", total=cfg.steps, completed=self.state.step, info="")
                while self.state.step < cfg.steps and not self._stop_everywhere():
                    self._update()
                    last = files.metrics[-1]
                    info = f"score {last['score_mean']:+.3f}  KL {last['kl_k1']:.3f}  beta {last['kl_coef']:.3g}"
                    bar.update(task, completed=self.state.step, info=info)
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        if self._stop_everywhere():  # Ctrl-C: state saved between two updates; --resume continues from here
            self._save_all()
            return {"run": str(files.root), "interrupted": True, "steps": self.state.step}
        if not files.evals or files.evals[-1]["step"] != self.state.step:
            files.add_eval(self.state.step, self._evaluate())
        self._save_all()
        return files.finish(cfg)

    def _stop_everywhere(self) -> bool:
        """Ctrl-C on any rank stops every rank after the same update."""
        return self.dist.any(self.stop_requested, self.device)

    def _request_stop(self, signum: int, frame: Any) -> None:
        # Ctrl-C: finish the current update, save, exit (a second Ctrl-C interrupts at once)
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _update(self) -> None:
        cfg, dist = self.cfg, self.dist
        t0 = time.perf_counter()
        rng_before = {k: g.get_state() for k, g in self.generators.items()}
        # 1. rollout (this rank's share of the batch)
        gen = self.generators["rollout"]
        idx = torch.randint(0, len(self.prompts), (self.local_batch,), generator=gen, device=gen.device)
        prompts = [self.prompts[i] for i in idx.tolist()]
        self.policy.eval()  # dropout off in policy, reference and value head  # N details #9
        r = collect_rollout(self.policy, self.ref, self.value_head, self.tokenizer, prompts, cfg,
                            self.generators["rollout"])
        # 2. score
        raw_scores, error = None, None
        try:
            raw_scores = check_scores(cfg.reward, self.reward_fn, reward_texts(r, cfg, self.reward_fn))
        except RewardError as e:
            error = str(e)
        errors = [e for e in dist.gather_objects(error) if e]
        if errors:  # on any rank: every rank stops
            self._save(rng_override=rng_before)  # the state at the start of this update: --resume retries it
            raise RewardError(errors[0])
        scores = torch.tensor(raw_scores, dtype=torch.float32, device=self.device)
        if cfg.missing_eos_penalty:
            scores = scores - cfg.missing_eos_penalty * (~r.has_eos).float()  # N details #2
        r.scores = scores
        if cfg.whiten_scores:  # running score normalisation over the global batch  # N details #6
            self.moments.update(dist.gather_rows(scores))
            scores = (scores - self.moments.mean) / max(self.moments.std, 1e-8)
        # 3. shape: per-token KL penalty with the score at the last token
        k1, k3 = core.kl_estimates(r.logprobs, r.ref_logprobs)
        rewards, non_score = core.compute_rewards(scores, k1, self.kl_ctl.value, r.mask)
        # 4. advantages
        advantages, returns = core.compute_gae(rewards, r.values, r.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = dist.masked_whiten(advantages, r.mask)
        # 5. optimise
        opt_stats = dist.mean_of_stats(self._optimise(r, advantages, returns), self.device)
        # 6. adapt beta on the global batch's mean per-sequence KL
        per_seq = dist.gather_rows(torch.stack([
            r.scores, core.masked_sum(k1, r.mask, -1), core.masked_sum(k3, r.mask, -1), rewards.sum(-1),
            non_score.sum(-1),
            r.mask.sum(-1).float(), r.has_eos.float(),
        ], dim=1))  # (batch, 7), every rank's episodes
        all_scores, kl_seq, kl3_seq, reward_total, reward_kl, lengths, has_eos = per_seq.unbind(1)
        kl_coef_used = self.kl_ctl.value
        self.kl_ctl.update(kl_seq.mean().item(), cfg.batch_size)
        # 7. log
        self.state.step += 1
        elapsed = time.perf_counter() - t0
        self.state.elapsed_s += elapsed
        parts = dist.gather_objects((r.prompts, r.texts))  # one collective for both lists
        all_prompts = [p for prompts_, _ in parts for p in prompts_]
        all_texts = [t for _, texts_ in parts for t in texts_]
        self.files.add_metrics({
            "step": self.state.step,
            "episodes": self.state.step * cfg.batch_size,
            "score_mean": all_scores.mean().item(),
            "score_std": all_scores.std().item(),
            "reward_total": reward_total.mean().item(),
            "reward_kl": reward_kl.mean().item(),
            "kl_k1": kl_seq.mean().item(),
            "kl_k3": kl3_seq.mean().item(),
            "kl_coef": kl_coef_used,
            **opt_stats,
            "explained_var": dist.explained_variance(r.values, returns, r.mask),
            "response_len": lengths.mean().item(),
            "eos_rate": has_eos.mean().item(),
            "distinct_2": distinct_n(all_texts, 2),
            "repetition_3": repetition_rate(all_texts, 3),
            "episodes_per_s": cfg.batch_size / elapsed,
            "time_s": self.state.elapsed_s,
        })
        distributed.maybe_record_digest(self.state.step, dist, self.model)  # tests: ranks stay identical
        if cfg.snapshot_every and self.state.step % cfg.snapshot_every == 0 and dist.is_main:
            save_model(self.export, self.tokenizer, self.files.snapshot(self.state.step))
        if self.state.step % cfg.log_every == 0 or self.state.step == cfg.steps:
            self.files.add_samples(self.state.step, "rollout", all_prompts[:8], all_texts[:8],
                                   all_scores[:8].tolist())
            self.files.add_eval(self.state.step, self._evaluate())
        if self.state.step % cfg.save_every == 0 and self.state.step < cfg.steps:
            self._save_all()
        if self.state.bad_updates >= cfg.max_bad_updates:  # logged above; now stop, with the state saved
            self._save()
            raise UserError(f"{self.state.bad_updates} consecutive updates had NaN/inf losses or gradients (all "
                            f"steps skipped); state saved at update {self.state.step}: lower --lr or check the reward")
        maybe_die("update-end")  # tests: killed between updates

    def _optimise(self, r: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """ppo_epochs passes of reshuffled minibatches  # N details #9; CleanRL ppo.py

        On several processes each rank shuffles its own episodes; DDP averages the gradients in backward()."""
        cfg = self.cfg
        mb_size = self.local_batch // cfg.minibatches
        sums: dict[str, float] = {}
        n, skipped = 0, 0
        self.policy.eval()
        for _epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(self.local_batch, generator=self.generators["shuffle"]).to(self.device)
            for start in range(0, self.local_batch, mb_size):
                mb = perm[start : start + mb_size]
                mb_mask = r.mask[mb]
                logits, mb_values = self.ddp(r.query_ids[mb], r.query_mask[mb], r.response_ids[mb])
                logp_all = logits.log_softmax(-1)  # once: the chosen tokens' log-probs and the entropy
                mb_logp = core.token_logprobs(logp_all, r.response_ids[mb])
                pg_loss, pg_stats = core.clipped_policy_loss(mb_logp, r.logprobs[mb], advantages[mb], mb_mask,
                                                             cfg.cliprange)
                vf_loss, vf_clipfrac = core.clipped_value_loss(mb_values, r.values[mb], returns[mb], mb_mask,
                                                               cfg.cliprange_value)
                with torch.set_grad_enabled(cfg.ent_coef > 0):  # logged only, unless it is in the loss
                    entropy = core.masked_mean(core.entropy_from_logprobs(logp_all), mb_mask)
                loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in self.opt.param_groups for p in g["params"]]
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                bad = not (torch.isfinite(loss) and torch.isfinite(grad_norm))
                if self.dist.any(bad, self.device):  # every rank skips the same steps
                    skipped += 1  # NaN/inf in loss or gradients: skip this step, keep the weights
                    self.opt.zero_grad(set_to_none=True)
                    continue
                self.opt.step()
                maybe_die("optimizer-step")  # tests: killed in the middle of an update
                stats = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "entropy": entropy.item(),
                         "vf_clipfrac": vf_clipfrac.item(), "grad_norm": grad_norm.item(),
                         **{k: v.item() for k, v in pg_stats.items()}}
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
        total = cfg.ppo_epochs * cfg.minibatches
        self.state.bad_updates = self.state.bad_updates + 1 if skipped == total else 0
        keys = ["policy_loss", "value_loss", "entropy", "clipfrac", "approx_kl", "ratio", "vf_clipfrac", "grad_norm"]
        out = {k: (sums[k] / n if n else float("nan")) for k in keys}
        out["skipped_steps"] = skipped
        return out

    def _evaluate(self) -> dict[str, Any]:
        """The fixed evaluation set, on rank 0 (its result is sent to every rank, so their tables agree)."""
        result, error = None, None
        if self.dist.is_main:
            try:
                result = evaluate_policy(self.policy, self.ref, self.tokenizer, self.eval_prompts, self.cfg,
                                         self.reward_fn)
            except RewardError as e:
                error = str(e)
        result, error = self.dist.broadcast_object((result, error))
        if error:
            self._save()  # a consistent state between updates: --resume continues from here
            raise RewardError(error)
        return result

    # --- saving and resuming ---------------------------------------------------------------------------------------
    def _save_all(self) -> None:
        """Checkpoint and tuned/ (collective: every rank calls it; rank 0 writes)."""
        self._save()
        if self.dist.is_main:
            save_model(self.export, self.tokenizer, self.files.tuned)

    def _save(self, rng_override: dict[str, torch.Tensor] | None = None) -> None:
        """The trainer state, with every rank's generator states (collective: every rank calls it; rank 0 writes)."""
        rng = rng_override or {k: g.get_state() for k, g in self.generators.items()}
        per_rank = self.dist.gather_objects(rng)
        if not self.dist.is_main:
            return
        rng = {_rng_key(name, rank): v for rank, states in enumerate(per_rank) for name, v in states.items()}
        self.state.kl_coef = self.kl_ctl.value
        self.state.score_moments = {"mean": self.moments.mean, "var": self.moments.var, "count": self.moments.count}
        state = {"trainer": self.state.__dict__, "tables": self.files.tables(), "world_size": self.dist.world}
        save_checkpoint(self.files.checkpoint, self.export_ckpt, self.tokenizer, self.value_head, self.opt, rng, state)
        self.files.flush()

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        saved_world = ckpt["state"].get("world_size", 1)
        if saved_world != self.dist.world:
            raise UserError(f"{path} was written by a run on {saved_world} process(es); resume it on the same number "
                            f"(now {self.dist.world}) so that every rank continues its own random streams")
        if self.cfg.lora_r:  # the base came from cfg.model; the adapters come from the checkpoint
            lora.load_adapters(self.policy, path / "policy")
        else:
            policy, _ = load_causal_lm(str(path / "policy"), device=str(self.device))
            self.policy.load_state_dict(policy.state_dict())
        self.value_head.load_state_dict({k: v.to(self.device) for k, v in ckpt["value_head"].items()})
        optimizer_from_flat(self.opt, ckpt["optimizer"], ckpt["state"]["optimizer"])
        for name, g in self.generators.items():
            g.set_state(ckpt["rng"][_rng_key(name, self.dist.rank)])
        self.state = TrainerState(**ckpt["state"]["trainer"])
        self.kl_ctl.value = self.state.kl_coef
        self.moments = core.RunningMoments(**self.state.score_moments) if self.state.score_moments else \
            core.RunningMoments()
        self.files.restore(ckpt["state"]["tables"])


def _rng_key(name: str, rank: int) -> str:
    """Generator names in the checkpoint: rank 0 keeps the one-process names."""
    return name if rank == 0 else f"{name}.rank{rank}"
