"""Structured filter pruning ranked by a criterion, after Yeom et al., "Pruning by Explaining" (Pattern
Recognition 2021, arXiv 1912.08881).

Which channels move together is asked of :class:`~compressor.graph.dependency.DependencyGraph`; how important they
are, of a criterion in :mod:`compressor.pruning.criteria` (LRP by default). Here: the schedule and the selection.
Groups are ranked globally across layers (the paper) or per layer, the least important are removed physically,
optionally with mean compensation and BatchNorm re-estimation, and the project's KD loop runs between steps. The
schedule is one-shot, or iterative with a step of a fraction of the *original* number of prunable filters (5 %
in the paper), re-ranking every step.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from compressor.core.config import param, validate
from compressor.core.context import Context
from compressor.core.data import Preprocess, Split
from compressor.core.metrics import count_macs, count_params, eval_mode
from compressor.core.train import BN_MODES, TRAIN_PRECISIONS, FinetuneConfig, distill, precision_problem
from compressor.errors import CompressorError
from compressor.graph.dependency import DependencyGraph, Group
from compressor.pruning.criteria import CRITERIA, LRPCriterion, RandomCriterion, group_scores
from compressor.pruning.knapsack import LatencyPlanner
from compressor.runtime.latency_model import latency_model
from compressor.runtime.latency_targets import PRECISIONS, TARGETS


@dataclass
class PruneConfig:
    """Parameters of the ``prune`` pass.

    * criterion: lrp | l1 | taylor | random.
    * target_ratio: fraction of the prunable filters to remove; target_macs_reduction (e.g. 3.0 = 3× fewer
      MACs) or target_speedup replaces it when set.
    * target_speedup: prune to a latency budget instead (HALP's latency-saliency knapsack,
      :mod:`compressor.pruning.knapsack`): the pruned model, predicted in ``deploy_precision`` at ``latency_batch``
      on ``target`` by the measured latency table (``compressor profile``), must run ``target_speedup`` times
      faster than the input model measured in FP32 there. Groups go by importance per unit of saved latency;
      ``width_step`` limits the candidate widths to multiples of it (fewer layer shapes to time); round_to and
      global_ranking do not apply (the knapsack ranks globally). ``threads``: the target runtime's threads.
    * schedule: one_shot | iterative; step: fraction of the original prunable filters removed per step (with
      target_speedup: fraction of the way from the input's predicted latency to the budget, HALP's schedule).
    * scope: all | inner (inner = only channels that pass through no residual addition or padding shortcut).
    * global_ranking: one ranking across layers (the paper) or the same fraction in every layer.
    * min_channels: floor per conv (≥ 1: channels; < 1: fraction of its original width); round_to: keep widths
      multiples of this (best effort for coupled groups).
    * recalibrate_bn: re-estimate BatchNorm running statistics on the reference images after each removal (no
      labels, no gradients; "adaptive BN" of Li et al., EagleEye, ECCV 2020).
    * compensate: replace each removed channel by its reference-set mean, folded into the consumers' biases
      (Evci et al., "Mean Replacement Pruning", 2018); off by default because it gives bias-free convs a bias.
    * lrp_abs, lrp_normalize, lrp_residual: see :class:`~compressor.pruning.criteria.LRPCriterion`.
    * finetune_steps (after every step), final_finetune_steps (at the end) and the remaining fields configure
      :func:`compressor.core.train.distill` (KD from the teacher + cross-entropy); final_lr (default: lr) is the final
      fine-tune's peak rate, higher than the per-step one to retrain rather than only recover ("learning-rate
      rewinding", Renda et al., ICLR 2020, found retraining at the original large rates beats fine-tuning at
      small ones). bn: "frozen" (running statistics,
      Tune mode; keep lr ≤ 0.002) or "train" (batch statistics; the usual long retraining at lr ≈ 0.01).
      precision: "fp32" or "bf16" (autocast + channels-last on CPUs with native bfloat16, see train.py).
    """

    criterion: str = param("lrp", choices=tuple(CRITERIA))
    target_ratio: float = param(0.3, gt=0, lt=1)
    target_macs_reduction: float | None = param(None, gt=1)
    target_speedup: float | None = param(None, gt=0)
    target: str = param("ort-cpu", choices=tuple(TARGETS))
    deploy_precision: str = param("int8", choices=PRECISIONS)
    latency_batch: int = param(64, ge=1)
    threads: int = param(2, ge=1)
    width_step: int = param(1, ge=1)
    schedule: str = param("one_shot", choices=("one_shot", "iterative"))
    step: float = param(0.05, gt=0, le=1)
    scope: str = param("all", choices=("all", "inner"))
    global_ranking: bool = True
    min_channels: float = param(1.0, gt=0)
    round_to: int = param(1, ge=1)
    recalibrate_bn: bool = True
    compensate: bool = False
    lrp_abs: str = param("elementwise", choices=("none", "elementwise", "per_sample"))
    lrp_normalize: bool = False
    lrp_residual: str = param("proportional", choices=("proportional", "gradient"))
    finetune_steps: int = param(0, ge=0)
    final_finetune_steps: int = param(0, ge=0)
    lr: float = param(0.001, gt=0)  # frozen BN diverges at a few times this (docs/passes.md, fold_bn)
    final_lr: float | None = param(None, gt=0)  # peak LR of the final fine-tune; None: the same as lr
    batch_size: int = param(128, ge=1)
    kd_loss: str = param("kl", choices=("kl", "mse"))
    kd_weight: float = param(1.0, ge=0)
    ce_weight: float = param(1.0, ge=0)
    tune_mode: bool = True
    bn: str = param("frozen", choices=BN_MODES)
    precision: str = param("fp32", choices=TRAIN_PRECISIONS)

    def check(self) -> str | None:
        if self.target_speedup is not None and self.target_macs_reduction is not None:
            return "prune: set target_speedup or target_macs_reduction, not both"
        if self.target_speedup is not None and (self.round_to > 1 or not self.global_ranking):
            return ("prune: round_to and global_ranking do not apply with target_speedup (the knapsack ranks globally "
                    "and picks widths from the latency table); remove them or use width_step")
        if self.target_speedup is None and self.width_step > 1:
            return "prune: width_step applies only with target_speedup; remove it or use round_to"
        return precision_problem(self.precision)

    @property
    def ratio(self) -> float | None:
        """The filter-ratio target, or None when the MAC or latency target rules."""
        return None if self.target_macs_reduction is not None or self.target_speedup is not None else self.target_ratio

    def criterion_object(self, seed: int):  # noqa: ANN201
        if self.criterion == "lrp":
            return LRPCriterion(abs=self.lrp_abs, normalize="sum" if self.lrp_normalize else "none",
                                residual=self.lrp_residual)
        if self.criterion == "random":
            return RandomCriterion(seed)
        return CRITERIA[self.criterion]()

    def finetune(self, steps: int, final: bool = False) -> FinetuneConfig:
        lr = self.final_lr if final and self.final_lr is not None else self.lr
        return FinetuneConfig(
            steps=steps, batch_size=self.batch_size, lr=lr, kd_loss=self.kd_loss, kd_weight=self.kd_weight,
            ce_weight=self.ce_weight, tune_mode=self.tune_mode, bn=self.bn,
            precision=self.precision,
        )


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}


def select(
    groups: list[Group], scores: np.ndarray, n_filters: int, widths: dict[str, int], floors: dict[str, int],
    round_to: int = 1, per_layer: dict[tuple[str, ...], int] | None = None,
) -> list[Group]:
    """Least important groups first until ``n_filters`` filters are chosen, never taking a conv below its floor.

    ``per_layer`` (layer key → groups to remove) replaces the global ranking by a quota per layer. With
    ``round_to`` > 1, removals are then undone (most important first) until every touched conv's width is a
    multiple of it, where possible.
    """
    order = np.argsort(scores, kind="stable")
    left = dict(widths)
    chosen: list[int] = []
    taken = Counter()
    removed = 0
    for i in order:
        g = groups[i]
        if per_layer is None and removed >= n_filters:
            break
        if per_layer is not None and taken[g.layer_key] >= per_layer.get(g.layer_key, 0):
            continue
        per_conv = Counter(n for n, _ in g.sources)
        if any(left[n] - k < floors[n] for n, k in per_conv.items()):
            continue
        for n, k in per_conv.items():
            left[n] -= k
        chosen.append(i)
        taken[g.layer_key] += 1
        removed += g.size
    if round_to > 1:
        for i in reversed(list(chosen)):
            off = {n for n, w in left.items() if w % round_to and w != widths[n]}
            if not off:
                break
            per_conv = Counter(n for n, _ in groups[i].sources)
            if set(per_conv) & off:
                chosen.remove(i)
                for n, k in per_conv.items():
                    left[n] += k
    return [groups[i] for i in chosen]


@torch.no_grad()
def mean_compensation(model: nn.Module, groups: list[Group], data: Split, preprocess: Preprocess,
                      batch_size: int = 100) -> dict[str, torch.Tensor]:
    """Bias change per consumer that replaces each removed channel by its mean (Evci et al., "Mean Replacement
    Pruning", 2018): Σ_k W[:, c, k] · E[x_c] over the reference images, computed before the removal.

    Exact for Linear consumers and for conv outputs away from the zero-padded border.
    """
    wanted: dict[str, set[int]] = {}
    for g in groups:
        for name, c in g.consumers:
            wanted.setdefault(name, set()).add(c)
    sums = {name: torch.zeros(model.get_submodule(name).weight.shape[1]) for name in wanted}

    def hook(name: str):  # noqa: ANN202
        def pre(module: nn.Module, args: tuple) -> None:
            x = args[0]
            sums[name] += x.sum(0) if x.dim() == 2 else x.sum(dim=(0, 2, 3)) / (x.shape[2] * x.shape[3])
        return pre

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in wanted]
    try:
        with eval_mode(model):
            for i in range(0, len(data), batch_size):
                model(preprocess(data.images[i : i + batch_size]))
    finally:
        for h in handles:
            h.remove()
    delta = {}
    for name, channels in wanted.items():
        weight = model.get_submodule(name).weight
        idx = torch.tensor(sorted(channels))
        mean = sums[name][idx] / len(data)
        w = weight[:, idx].reshape(weight.shape[0], len(idx), -1).sum(-1)
        delta[name] = w @ mean
    return delta


@torch.no_grad()
def apply_compensation(model: nn.Module, delta: dict[str, torch.Tensor]) -> None:
    """Add the bias changes of :func:`mean_compensation` (creating a bias where the layer has none)."""
    for name, d in delta.items():
        m = model.get_submodule(name)
        if m.bias is None:
            m.bias = nn.Parameter(d.clone().to(m.weight.dtype), requires_grad=m.weight.requires_grad)
        else:
            m.bias += d


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Split, preprocess: Preprocess, batch_size: int = 100) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``data`` (cumulative average, eval after).

    Removing channels shifts the statistics the BNs downstream were trained with; re-estimating them on a few
    unlabelled images restores much of the accuracy without any training (Li et al., "EagleEye", ECCV 2020).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for i in range(0, len(data), batch_size):
            model(preprocess(data.images[i : i + batch_size]))
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum, m.training = momentum, training
        model.train(was_training)
        for m, (_, training) in zip(bns, saved):
            m.training = training


class Pruner:
    """Structured pruning by explaining (LRP) or a baseline criterion; channels are removed physically.

    :meth:`run` returns the pruned model (the input is not modified) and a record: per step the pruning rate
    (fraction of the original prunable filters), parameters, MACs and validation top-1, and the area under
    validation top-1 vs rate (``auc``).
    """

    def __init__(self, config: PruneConfig | None = None) -> None:
        self.config = validate(config or PruneConfig(), "prune")

    def run(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict]:
        cfg = self.config
        model = copy.deepcopy(model).eval()
        shape = tuple(ctx.input_shape)
        criterion = cfg.criterion_object(ctx.seed)
        graph = DependencyGraph(model, shape)
        in_scope = [g for g in graph.groups() if cfg.scope == "all" or not g.residual]
        if not in_scope:
            raise CompressorError(f"prune: {type(model).__name__} has no prunable channel groups in scope {cfg.scope!r}")
        total = sum(g.size for g in in_scope)
        orig_widths = conv_widths(model)
        floors = {n: max(1, math.ceil(cfg.min_channels * w) if cfg.min_channels < 1 else int(cfg.min_channels))
                  for n, w in orig_widths.items()}
        layer_sizes = Counter(g.layer_key for g in in_scope)
        base_macs, base_params = count_macs(model, shape), count_params(model)
        steps = [self._record(model, ctx, 0, 0.0, base_params, base_macs)]
        removed = 0
        planner = None
        if cfg.target_speedup is not None:
            planner = LatencyPlanner(latency_model(cfg.target, cfg.deploy_precision, cfg.latency_batch, cfg.threads,
                                                   ctx.progress, ctx.openvino_precision), cfg.target_speedup,
                                     cfg.width_step)
            planner.begin(model, shape)
            steps[0]["predicted_ms"] = planner.start_ms

        def reached() -> bool:
            if planner is not None:
                return planner.predicted(model) <= planner.budget_ms * (1 + 1e-9)
            if cfg.ratio is not None:
                return removed >= round(cfg.ratio * total)
            return base_macs / count_macs(model, shape) >= cfg.target_macs_reduction

        tick = 0
        while not reached():
            tick += 1
            goal = 1.0 if cfg.schedule == "one_shot" else min(1.0, tick * cfg.step)
            last = goal >= (cfg.ratio if cfg.ratio is not None else 1.0)
            if cfg.ratio is not None:
                goal = min(goal, cfg.ratio)
            if planner is None and not last and round(goal * total) <= removed:
                continue  # a coupled group of the previous step already overshot this step's share
            graph = DependencyGraph(model, shape)
            groups = [g for g in graph.groups() if cfg.scope == "all" or not g.residual]
            scores = group_scores(groups, criterion(model, ctx.splits.reference, ctx.preprocess))
            if planner is not None:
                chosen = planner.select(model, groups, scores, floors, planner.step_budget(goal))
            else:
                chosen = self._choose(model, graph, groups, scores, goal, total, removed, floors, layer_sizes,
                                      base_macs)
            if not chosen:
                if last:
                    break  # every remaining group is at its floor
                continue
            if cfg.compensate:
                apply_compensation(model, mean_compensation(model, chosen, ctx.splits.reference, ctx.preprocess))
            graph.prune(chosen)
            if cfg.recalibrate_bn:
                recalibrate_bn(model, ctx.splits.reference, ctx.preprocess)
            removed += sum(g.size for g in chosen)
            distill(model, ctx.teacher, ctx.splits.finetune, ctx.preprocess, cfg.finetune(cfg.finetune_steps),
                    seed=ctx.seed + len(steps), progress=ctx.progress, desc=f"prune step {len(steps)}")
            steps.append(self._record(model, ctx, len(steps), removed / total, count_params(model),
                                      count_macs(model, shape)))
            if planner is not None:
                steps[-1]["predicted_ms"] = planner.predicted(model)
        # Nothing removed (a latency budget the deployed precision alone meets): the model is the pass's input,
        # which a fine-tune could only move away from what it was trained to be.
        if cfg.final_finetune_steps > 0 and removed > 0:
            distill(model, ctx.teacher, ctx.splits.finetune, ctx.preprocess, cfg.finetune(cfg.final_finetune_steps, final=True),
                    seed=ctx.seed, progress=ctx.progress, desc="prune final fine-tune")
            steps.append(self._record(model, ctx, len(steps), removed / total, count_params(model),
                                      count_macs(model, shape), finetuned=True))
        rates = [s["rate"] for s in steps if not s.get("finetuned")]
        accs = [s["val_top1"] for s in steps if not s.get("finetuned")]
        auc = float(np.trapezoid(accs, rates)) if len(rates) > 1 else 0.0
        record = {
            "config": asdict(cfg), "prunable_filters": total, "removed_filters": removed,
            "macs_reduction": base_macs / count_macs(model, shape), "auc": auc,
            "widths": conv_widths(model), "steps": steps,
        }
        if planner is not None:
            record["latency"] = planner.record(model)
        return model, record

    def _choose(
        self, model: nn.Module, graph: DependencyGraph, groups: list[Group], scores: np.ndarray, goal: float,
        total: int, removed: int, floors: dict[str, int], layer_sizes: Counter, base_macs: int,
    ) -> list[Group]:
        """Groups to remove this step: up to ``goal`` · total filters, or by MACs, the fewest that reach it."""
        cfg = self.config
        widths = conv_widths(model)

        def pick(n_filters: int, rate: float) -> list[Group]:
            quota = None
            if not cfg.global_ranking:
                now = Counter(g.layer_key for g in groups)
                quota = {k: max(0, round(rate * n) - (n - now[k])) for k, n in layer_sizes.items()}
            return select(groups, scores, n_filters, widths, floors, cfg.round_to, quota)

        if cfg.ratio is not None or goal < 1.0:
            chosen = pick(max(0, round(goal * total) - removed), goal)
            if cfg.target_macs_reduction is None or not chosen:
                return chosen
            if base_macs / count_macs(graph.prune(chosen, copy.deepcopy(model)), tuple(graph.input_shape)) \
                    < cfg.target_macs_reduction:
                return chosen
        # Bisection over how many filters to take this step: the smallest that meets the MAC target.
        shape = tuple(graph.input_shape)
        hi_rate = goal if goal < 1.0 else 1.0
        lo, hi = 0, max(0, round(hi_rate * total) - removed)
        best = pick(hi, hi_rate)
        while lo < hi:
            mid = (lo + hi) // 2
            trial = pick(mid, (removed + mid) / total)
            if base_macs / count_macs(graph.prune(trial, copy.deepcopy(model)), shape) >= cfg.target_macs_reduction:
                hi, best = mid, trial
            else:
                lo = mid + 1
        return best

    @staticmethod
    def _record(model: nn.Module, ctx: Context, step: int, rate: float, params: int, macs: int,
                finetuned: bool = False) -> dict:
        out = {"step": step, "rate": rate, "params": params, "macs": macs, "val_top1": ctx.validation_top1(model)}
        if finetuned:
            out["finetuned"] = True
        return out
