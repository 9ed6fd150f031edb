"""N2N learning: layer removal and shrinkage chosen by reinforcement learning.

Follows Ashok, Rhinehart, Beainy and Kitani, "N2N Learning: Network to Network Compression via Policy Gradient
Reinforcement Learning" (ICLR 2018, arXiv 1709.06030). The teacher is compressed in two stages, each a
REINFORCE search over a policy that reads one state vector per layer:

1. *Removal*: a bidirectional LSTM marks every layer keep or remove. Only layers whose removal can be
   repaired are ever removed: a residual block is replaced by its own skip path (``nn.Identity`` or the
   option-A ``ChannelPadShortcut``), and in a plain ``nn.Sequential`` a shape-preserving convolution is
   removed together with its BatchNorm and activation. Every other layer is fixed.
2. *Shrinkage*: an autoregressive LSTM picks an output-width scale per remaining layer. Channels are kept by
   importance (``compressor.pruning.criteria``) and coupled channels move together (``compressor.graph.dependency``).

Each sampled student inherits the teacher's weights, is distilled briefly and is scored on the validation split
with R = C(2 − C)·A_s/A_t, C = 1 − P_s/P_t. The stages are joined by plain data: a ``LayerTable`` describes a
model, a ``Candidate`` names one student, a ``Measurement`` is what training it produced, and the context's
executor (:mod:`compressor.core.executors`) trains each round's new candidates, serially, in worker processes or
on Ray, with identical measurements.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from compressor.core.config import param, validate
from compressor.core.files import save_figure
from compressor.core.metrics import count_macs, count_params
from compressor.core.serialize import atomic_torch_save
from compressor.core.train import BN_MODES, TRAIN_PRECISIONS, FinetuneConfig, distill, precision_problem
from compressor.errors import CompressorError

if TYPE_CHECKING:
    from compressor.core.context import Context
    from compressor.core.executors import Executor

from compressor.n2n.layers import (
    PAPER_SCALES,
    Candidate,
    LayerTable,
    Measurement,
    _within,
    build_student,
    describe_layers,
    remove_units,
)
from compressor.n2n.policy import RemovalPolicy, ShrinkPolicy
from compressor.n2n.reward import RewardFunction
from compressor.n2n.students import StudentEvaluator, train_student
from compressor.runtime.latency_model import latency_model
from compressor.runtime.latency_targets import PRECISIONS, TARGETS


@dataclass
class N2NConfig:
    """Parameters of the two-stage search and of the final fine-tune.

    Search budget = (removal_iterations + shrink_iterations) × rollouts students, each distilled for
    student_steps steps of student_batch_size images drawn from subset_size fine-tune images (a repeated
    candidate is measured once). removal_lr / shrink_lr: Adam rates of the two policies (reference code: 0.003
    and 0.1); hidden: LSTM width (30); scales: stage-2 width choices (default: the reference set, repeats kept);
    baseline_decay: moving average of iteration-mean rewards used as baseline. kd_loss "mse" is the paper's
    logit MSE (ce_weight 0: no hard labels in the search); with frozen BN it needs a small rate (student_lr and
    final_lr 0.001; larger rates diverged with removed blocks). bn / final_bn:
    BatchNorm during the students' and the final fine-tune, "frozen" (running statistics) or "train" (batch
    statistics, which re-fits the statistics a removed block leaves stale and takes rates around 0.01).
    precision: "fp32" or "bf16" for every student and the final fine-tune (see compressor.core.train).
    student_augment: false trains the students on the unaugmented subset, so the teacher's logits for it are
    computed once and reused by every student instead of a teacher forward pass per step (our speed-up, not
    the paper's; the final fine-tune still augments).
    size_measure: "params" (paper), "macs" or "latency" for C; max_params / max_macs: hard limits enforced by the
    annealed penalty over penalty_epochs iterations; min_params / min_macs: floors under the same penalty (our
    addition, to search a size band instead of the size the reward alone prefers, see RewardFunction).
    Latency is predicted by the latency model of ``target`` (``compressor profile``) in ``deploy_precision`` at
    ``latency_batch`` with ``threads``; min_speedup (limit) / max_speedup (floor) bound the student's predicted
    speed-up over the parent measured in FP32 on the target, under the same penalty. fixed: module names never
    removed or shrunk. final_*: the best student's fine-tune (KD + CE on the whole fine-tune split).
    policy_init: a saved ``n2n_policy.pt`` to warm-start from (policy transfer). resume: continue a checkpointed
    search with the same settings (iteration counts may grow).
    """

    removal_iterations: int = param(10, ge=0)
    shrink_iterations: int = param(10, ge=0)
    rollouts: int = param(5, ge=1)
    removal_lr: float = param(0.003, gt=0)
    shrink_lr: float = param(0.1, gt=0)
    hidden: int = param(30, ge=1)
    scales: tuple[float, ...] = param(PAPER_SCALES, gt=0, le=1)
    baseline_decay: float = param(0.8, ge=0, lt=1)
    student_steps: int = param(100, ge=0)
    student_batch_size: int = param(64, ge=1)
    student_lr: float = param(0.001, gt=0)
    student_augment: bool = True
    subset_size: int = param(10000, ge=1)
    kd_loss: str = param("mse", choices=("mse", "kl"))
    ce_weight: float = param(0.0, ge=0)
    size_measure: str = param("params", choices=("params", "macs", "latency"))
    max_params: int | None = param(None, ge=1)
    max_macs: int | None = param(None, ge=1)
    min_params: int | None = param(None, ge=0)
    min_macs: int | None = param(None, ge=0)
    min_speedup: float | None = param(None, gt=0)
    max_speedup: float | None = param(None, gt=0)
    target: str = param("ort-cpu", choices=tuple(TARGETS))
    deploy_precision: str = param("int8", choices=PRECISIONS)
    latency_batch: int = param(64, ge=1)
    threads: int = param(2, ge=1)
    penalty_epochs: float = param(15.0, gt=0)
    fixed: tuple[str, ...] = ()
    final_steps: int = param(2000, ge=0)
    final_lr: float = param(0.001, gt=0)
    final_batch_size: int = param(128, ge=1)
    final_kd_loss: str = param("mse", choices=("mse", "kl"))
    final_ce_weight: float = param(1.0, ge=0)
    bn: str = param("frozen", choices=BN_MODES)
    final_bn: str = param("frozen", choices=BN_MODES)
    precision: str = param("fp32", choices=TRAIN_PRECISIONS)
    tune_mode: bool = True
    policy_init: str = ""
    resume: bool = True

    def check(self) -> str | None:
        if self.min_speedup is not None and self.max_speedup is not None and self.min_speedup > self.max_speedup:
            return (f"n2n: min_speedup ({self.min_speedup}) is above max_speedup ({self.max_speedup}); no student can "
                    "satisfy both, lower min_speedup or raise max_speedup")
        for lo, hi, what in ((self.min_params, self.max_params, "params"), (self.min_macs, self.max_macs, "macs")):
            if lo is not None and hi is not None and lo > hi:
                return (f"n2n: min_{what} ({lo}) is above max_{what} ({hi}); no student can satisfy both, lower "
                        f"min_{what} or raise max_{what}")
        return precision_problem(self.precision)

    def search_fingerprint(self, *extra: object) -> str:
        """Everything that changes the search trajectory except the iteration counts (which may be extended)."""
        skip = {"removal_iterations", "shrink_iterations", "final_steps", "final_lr", "final_batch_size",
                "final_kd_loss", "final_ce_weight", "final_bn", "tune_mode", "resume"}
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return hashlib.sha256(repr((sorted(d.items()), extra)).encode()).hexdigest()[:16]


@dataclass
class StageState:
    """Progress of one REINFORCE stage: plain data, checkpointed after every iteration."""

    iteration: int = 0
    baseline: float = 0.0
    history: list[dict] = field(default_factory=list)


@dataclass
class N2NResult:
    """The chosen student (fine-tuned), its candidate and the JSON-serialisable record of the search."""

    model: nn.Module
    candidate: Candidate
    details: dict[str, Any]


class N2NSearch:
    """Two-stage N2N search on ``parent`` with knowledge distilled from ``ctx.teacher``.

    Rewards are relative to ``parent`` (its validation accuracy and size). Each rollout's actions are weighted
    by its own advantage R_i − b (the paper's REINFORCE estimator); the reference code (``rl.py``) instead gave
    every rollout of an epoch the batch-mean advantage. One Adam step per iteration over the rollouts' mean loss
    (the reference stepped once per rollout). The baseline b starts at 0 (as in the reference), becomes the first
    iteration's mean reward and then follows an exponential moving average of iteration means (decay
    ``baseline_decay``; the reference used the plain running mean). Penalty epochs count iterations per stage.
    The search state (policies, optimizers, baselines, history, measured candidates, sampling RNG) is saved to
    ``out_dir/n2n_search.pt`` after every iteration, and a re-run with the same settings continues from it.
    """

    CHECKPOINT = "n2n_search.pt"
    POLICY = "n2n_policy.pt"
    PLOT = "n2n_rewards.png"

    def __init__(self, parent: nn.Module, ctx: Context, config: N2NConfig, executor: Executor | None = None,
                 out_dir: str | Path | None = None):
        self.parent, self.ctx, self.config = parent.eval(), ctx, validate(config, "n2n")
        self.executor = executor or ctx.executor
        self._shared = None  # the evaluator as handed to the executor, once per search
        self.out_dir = Path(out_dir if out_dir is not None else ctx.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.input_shape = tuple(ctx.input_shape)
        self.table = describe_layers(parent, config.fixed, self.input_shape)
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            self.removal = RemovalPolicy(config.hidden)
            self.shrink = ShrinkPolicy(config.scales, config.hidden)
        if config.policy_init:
            self.load_policy(config.policy_init)
        self.removal_opt = torch.optim.Adam(self.removal.parameters(), lr=config.removal_lr)
        self.shrink_opt = torch.optim.Adam(self.shrink.parameters(), lr=config.shrink_lr)
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.stages = {"removal": StageState(), "shrink": StageState()}
        self.measurements: dict[str, Measurement] = {}
        self.evaluations, self.resumed = 0, False
        self.fingerprint = config.search_fingerprint(
            ctx.seed, [astuple(layer) for layer in self.table.layers], count_params(parent),
            ctx.executor.threads)
        subset = np.random.default_rng(ctx.seed).permutation(len(ctx.splits.finetune))[: config.subset_size]
        finetune = FinetuneConfig(steps=config.student_steps, batch_size=config.student_batch_size, lr=config.student_lr,
                                  kd_loss=config.kd_loss, ce_weight=config.ce_weight, tune_mode=False, bn=config.bn,
                                  precision=config.precision, augment=config.student_augment)
        latency, baseline, parent_ms = None, 0.0, 0.0
        if config.size_measure == "latency" or config.min_speedup is not None or config.max_speedup is not None:
            latency = latency_model(config.target, config.deploy_precision, config.latency_batch, config.threads,
                                    ctx.progress, ctx.openvino_precision)
            parent_ms = latency.calibrate(parent, self.input_shape)
            fp32, own = latency.fp32_gain(parent, self.input_shape)
            baseline = parent_ms * fp32 / own  # the parent's FP32 latency in the prediction's units
        self.evaluator = StudentEvaluator(parent, self.table, ctx.teacher, ctx.splits.finetune.subset(np.sort(subset)),
                                          ctx.preprocess, ctx.splits.validation, self.input_shape, finetune, ctx.seed,
                                          config.fixed)
        self.reward = RewardFunction(
            ctx.validation_top1(parent), count_params(parent), count_macs(parent, self.input_shape),
            size_measure=config.size_measure, max_params=config.max_params, max_macs=config.max_macs,
            penalty_epochs=config.penalty_epochs, min_params=config.min_params, min_macs=config.min_macs,
            teacher_latency_ms=parent_ms, baseline_ms=baseline, min_speedup=config.min_speedup,
            max_speedup=config.max_speedup)
        self.latency = latency

    # ------------------------------------------------------------------------------------- persistence

    def load_policy(self, path: str | Path) -> None:
        """Warm-start both policies from a saved policy file (possibly from another teacher)."""
        try:
            saved = torch.load(path, weights_only=True)
            self.removal.load_state_dict(saved["removal"])
            self.shrink.load_state_dict(saved["shrink"])
        except (OSError, KeyError, RuntimeError) as exc:
            raise CompressorError(f"n2n: cannot warm-start from policy file {path}: {exc}".splitlines()[0]) from None

    def save_policy(self, path: str | Path) -> Path:
        atomic_torch_save({"removal": self.removal.state_dict(), "shrink": self.shrink.state_dict()}, Path(path))
        return Path(path)

    def _checkpoint(self) -> None:
        atomic_torch_save({
            "fingerprint": self.fingerprint,
            "removal": self.removal.state_dict(), "shrink": self.shrink.state_dict(),
            "removal_opt": self.removal_opt.state_dict(), "shrink_opt": self.shrink_opt.state_dict(),
            "stages": {k: asdict(s) for k, s in self.stages.items()},
            "generator": self.generator.get_state(),
            "measurements": {k: asdict(m) for k, m in self.measurements.items()},
        }, self.out_dir / self.CHECKPOINT)

    def _restore(self) -> bool:
        path = self.out_dir / self.CHECKPOINT
        if not (self.config.resume and path.exists()):
            return False
        state = torch.load(path, weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            return False
        self.removal.load_state_dict(state["removal"])
        self.shrink.load_state_dict(state["shrink"])
        self.removal_opt.load_state_dict(state["removal_opt"])
        self.shrink_opt.load_state_dict(state["shrink_opt"])
        self.stages = {k: StageState(**s) for k, s in state["stages"].items()}
        self.generator.set_state(state["generator"])
        self.measurements = {k: Measurement(**m) for k, m in state["measurements"].items()}
        return True

    # ------------------------------------------------------------------------------------------ search

    def _measure(self, candidates: list[Candidate]) -> list[Measurement]:
        """Measure the round's new candidates as independent tasks; results are stored by candidate, so neither
        the executor nor the order tasks finish in changes what the search sees."""
        todo = list({c.key(): c for c in candidates if c.key() not in self.measurements}.values())
        if todo and self._shared is None:
            self._shared = self.executor.put(self.evaluator.prepare())
        names = [f"n2n student {c.key()[:120]}" for c in todo]
        measured = self.executor.map(train_student, todo, self._shared, names) if todo else []
        if self.latency is not None and todo:
            # Predicted here in the driver once the round is trained: a table entry still missing is timed with no
            # worker beside it, and the prediction depends on the architecture only, not on the trained weights.
            self.executor.release()
            measured = [replace(m, latency_ms=self.latency.predict(
                build_student(self.parent, self.table, c, self.input_shape, self.config.fixed), self.input_shape))
                if m.valid else m for c, m in zip(todo, measured)]
        for c, m in zip(todo, measured):
            self.measurements[c.key()] = m
        self.evaluations += len(todo)
        return [self.measurements[c.key()] for c in candidates]

    def _stage(self, name: str, iterations: int, policy: nn.Module, optimizer: torch.optim.Optimizer,
               states: torch.Tensor, mask: torch.Tensor, to_candidate: Callable[[torch.Tensor], Candidate]) -> None:
        state = self.stages[name]
        if state.iteration >= iterations or not bool(mask.any()):
            return
        bar = tqdm(range(state.iteration, iterations), desc=f"n2n {name}", disable=not self.ctx.progress, leave=False)
        for it in bar:
            actions = policy.sample(states, mask, self.config.rollouts, self.generator)
            candidates = [to_candidate(a) for a in actions]
            measured = self._measure(candidates)
            rewards = [self.reward(m, it) for m in measured]
            advantages = torch.tensor(rewards) - state.baseline
            loss = -(advantages * policy.log_prob(states, mask, actions)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            state.history.append({
                "stage": name, "iteration": it, "baseline": state.baseline, "rewards": rewards,
                "mean_reward": float(np.mean(rewards)), "loss": float(loss.detach()),
                "candidates": [c.as_dict() for c in candidates], "actions": actions.tolist(),
                "accuracy": [m.accuracy for m in measured], "params": [m.params for m in measured],
                "macs": [m.macs for m in measured], "latency_ms": [m.latency_ms for m in measured],
            })
            mean = float(np.mean(rewards))
            d = self.config.baseline_decay
            state.baseline = mean if it == 0 else d * state.baseline + (1.0 - d) * mean
            state.iteration = it + 1
            self._checkpoint()
            bar.set_postfix(mean=f"{mean:.3f}", best=f"{max(rewards):.3f}")

    def _best(self, stages: Sequence[str]) -> tuple[Candidate, Measurement, float] | None:
        """Highest reward as it stands after the penalty horizon (limit violators score −1); first seen wins ties."""
        best = None
        for s in stages:
            for entry in self.stages[s].history:
                for cd in entry["candidates"]:
                    cand = Candidate.from_dict(cd)
                    m = self.measurements[cand.key()]
                    r = self.reward(m, math.inf)
                    if best is None or r > best[2]:
                        best = (cand, m, r)
        return best

    def _removal_candidate(self, actions: torch.Tensor) -> Candidate:
        return Candidate.make([layer.unit for layer, a in zip(self.table.layers, actions.tolist())
                               if layer.decides and a == 0])

    def search(self) -> tuple[Candidate, Measurement | None]:
        """Run (or continue) both stages; returns the best candidate and its search measurement."""
        cfg = self.config
        self.resumed = self._restore()
        if self.stages["shrink"].iteration and self.stages["removal"].iteration < cfg.removal_iterations:
            raise CompressorError("n2n: the checkpointed search already started shrinkage, so removal_iterations "
                                  "cannot grow; keep its value or set resume: false to start over")
        self._stage("removal", cfg.removal_iterations, self.removal, self.removal_opt,
                    self.table.states(), self.table.decision_mask(), self._removal_candidate)
        stage1 = self._best(["removal"])
        base = stage1[0] if stage1 is not None else Candidate()
        child = remove_units(self.parent, self.table, base.remove)
        remaining = describe_layers(child, (), self.input_shape).layers
        fixed = set(cfg.fixed)
        shrinkable = torch.tensor([layer.type != "linear" and not any(_within(layer.name, f) for f in fixed)
                                   for layer in remaining], dtype=torch.bool)
        child_states = LayerTable(remaining, {}).states()

        def shrink_candidate(actions: torch.Tensor) -> Candidate:
            scales = {layer.name: float(self.shrink.scales[a]) for layer, a, ok in
                      zip(remaining, actions.tolist(), shrinkable.tolist()) if ok}
            return Candidate.make(base.remove, scales)

        self._stage("shrink", cfg.shrink_iterations, self.shrink, self.shrink_opt, child_states, shrinkable,
                    shrink_candidate)
        best = self._best(["removal", "shrink"])
        return (best[0], best[1]) if best is not None else (Candidate(), None)

    def history(self) -> list[dict]:
        return self.stages["removal"].history + self.stages["shrink"].history

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        hist = self.history()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = np.arange(1, len(hist) + 1)
        ax.plot(x, [h["mean_reward"] for h in hist], marker="o", label="mean reward")
        ax.plot(x, [max(h["rewards"]) for h in hist], marker=".", linestyle="--", label="best of iteration")
        split = len(self.stages["removal"].history)
        if 0 < split < len(hist):
            ax.axvline(split + 0.5, color="grey", linewidth=0.8)
        ax.set_xlabel("iteration (removal, then shrinkage)")
        ax.set_ylabel("reward")
        ax.set_title("N2N search")
        ax.legend()
        fig.tight_layout()
        return save_figure(fig, path)

    def run(self) -> N2NResult:
        """Search, then fine-tune the best student longer with KD + CE on the whole fine-tune split."""
        cfg, ctx = self.config, self.ctx
        start = time.perf_counter()
        candidate, measured = self.search()
        search_seconds = time.perf_counter() - start
        within = measured is None or self.reward.within_limits(measured)
        if not within:
            warnings.warn(f"n2n: no student of the search met the size limits; handing on the best violator "
                          f"({measured.params:,} params, {measured.macs:,} MACs). Run more iterations or widen "
                          f"the limits", stacklevel=2)
        self.save_policy(self.out_dir / self.POLICY)
        self.plot(self.out_dir / self.PLOT)
        student = build_student(self.parent, self.table, candidate, self.input_shape, cfg.fixed)
        final = FinetuneConfig(steps=cfg.final_steps, batch_size=cfg.final_batch_size, lr=cfg.final_lr,
                               kd_loss=cfg.final_kd_loss, ce_weight=cfg.final_ce_weight, tune_mode=cfg.tune_mode,
                               bn=cfg.final_bn, precision=cfg.precision)
        distill(student, ctx.teacher, ctx.splits.finetune, ctx.preprocess, final, seed=ctx.seed,
                progress=ctx.progress, desc="n2n fine-tune best")
        details = {
            "teacher": {"validation_top1": self.reward.teacher_accuracy, "params": self.reward.teacher_params,
                        "macs": self.reward.teacher_macs, "predicted_ms": self.reward.teacher_latency_ms or None,
                        "fp32_baseline_ms": self.reward.baseline_ms or None},
            "budget": {
                "removal_iterations": cfg.removal_iterations, "shrink_iterations": cfg.shrink_iterations,
                "rollouts": cfg.rollouts, "student_steps": cfg.student_steps,
                "student_batch_size": cfg.student_batch_size, "subset_size": len(self.evaluator.train),
                "candidates_trained_this_run": self.evaluations, "candidates_measured": len(self.measurements),
                "search_seconds_this_run": search_seconds, "resumed": self.resumed,
            },
            "best": {
                "candidate": candidate.as_dict(),
                "search_validation_top1": measured.accuracy if measured else None,
                "reward": self.reward(measured, math.inf) if measured else None,
                "params": count_params(student), "macs": count_macs(student, self.input_shape),
                "removed_blocks": len(candidate.remove),
                "within_limits": within,
                **({"predicted_ms": self.latency.predict(student, self.input_shape),
                    "measured_ms": self.latency.measure_model(student, self.input_shape)} if self.latency else {}),
            },
            "final_validation_top1": ctx.validation_top1(student),
            "history": [{k: v for k, v in h.items() if k != "actions"} for h in self.history()],
            "files": {"checkpoint": self.CHECKPOINT, "policy": self.POLICY, "reward_plot": self.PLOT},
        }
        return N2NResult(student, candidate, details)
