"""Pruning to a latency budget: HALP's latency-saliency knapsack (Shen, Molchanov, Yin and Alvarez, "Structural
Pruning via Latency-Saliency Knapsack", NeurIPS 2022).

Every layer (the channel groups that share their source convs, :attr:`Group.layer_key`) keeps its *j* most
important groups for one *j*. Keeping *j* is worth the summed importance of those groups and costs the latency of
the layers they touch at that width, read from the target's measured table (:mod:`compressor.runtime.latency_model`)
with every other layer at its current width; that is HALP's treatment of a layer's neighbours, and its iterative
schedule re-solves after every step. A multiple-choice knapsack (dynamic programming over the latency budget)
then keeps the most importance the budget allows. Channels are therefore removed by relevance per unit of saved
latency: a channel whose removal saves nothing (inside a step of the latency staircase) is kept, and widths land
on the fast side of each step by construction, with no rounding rule.

``importance`` is any criterion's group score (LRP by default, :mod:`compressor.pruning.criteria`), so criteria
stay comparable under the same budget.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
from torch import nn

from compressor.graph.dependency import DependencyGraph, Group
from compressor.runtime.latency_model import LatencyModel, Layer, describe, removed_members, shape_after, speedup
from compressor.runtime.latency_targets import LayerShape


def knapsack(values: list[np.ndarray], costs: list[np.ndarray], budget: float, bins: int = 4000) -> list[int] | None:
    """The option index per layer that maximises Σ value subject to Σ cost ≤ ``budget``, exactly one option per
    layer: the multiple-choice knapsack, by dynamic programming over ``bins`` steps of the budget. Costs are rounded
    to the nearest step; should the rounding overshoot, the budget is tightened by the excess and solved again, so
    the choice always fits. None when even the cheapest options exceed the budget."""
    lows = [float(np.min(c)) for c in costs]
    cheapest = [int(np.lexsort((-np.asarray(v), np.asarray(c)))[0]) for v, c in zip(values, costs)]
    room = budget - sum(lows)
    if room < -1e-12:
        return None
    target = room
    for _ in range(20):
        if target <= 1e-12:
            break
        picks = _dp(values, [np.asarray(c, float) - low for c, low in zip(costs, lows)], target, bins)
        spent = sum(float(c[j]) - low for c, j, low in zip(costs, picks, lows))
        if spent <= room + 1e-9:
            return picks
        target -= spent - room
    return cheapest  # the cheapest options always fit: among them, the most valuable


def _dp(values: list[np.ndarray], costs: list[np.ndarray], room: float, bins: int) -> list[int]:
    step = room / bins
    units = [np.rint(c / step).astype(np.int64) for c in costs]
    best = np.zeros(bins + 1)  # best[b]: the most value of the layers so far with total cost ≤ b steps
    picks = np.zeros((len(values), bins + 1), dtype=np.int64)
    for k, (v, u) in enumerate(zip(values, units)):
        new = np.full(bins + 1, -np.inf)
        for j, (vj, uj) in enumerate(zip(np.asarray(v, float), u)):
            if uj > bins:
                continue
            cand = np.full(bins + 1, -np.inf)
            cand[uj:] = best[: bins + 1 - uj] + vj
            better = cand > new
            new[better], picks[k, better] = cand[better], j
        best = new
    b, chosen = bins, [0] * len(values)
    for k in reversed(range(len(values))):
        chosen[k] = int(picks[k, b])
        b -= int(units[k][chosen[k]])
    return chosen


@dataclass
class LayerOptions:
    """One layer's choices: its groups by decreasing importance and, per candidate kept count, value and cost."""

    key: tuple[str, ...]
    ranked: list[Group]
    kept: list[int]
    values: np.ndarray
    costs: np.ndarray  # change of the predicted model latency (ms) against keeping every group

    def removed(self, option: int) -> list[Group]:
        return self.ranked[self.kept[option]:]


@dataclass
class LatencyPlanner:
    """Latency bookkeeping of one prune run: the baseline, the budget, the knapsack per step and the record.

    ``baseline_ms``: the input model measured whole in FP32 on the target (what it runs at today), alternating
    with its measurement in the deployed precision; their ratio scales the prediction of the input
    (``start_ms``, the latency model calibrated on it) into the FP32 baseline in predicted units, so the budget is
    ``start_ms · baseline_ms / input_ms / target_speedup`` of predicted latency and does not drift with the
    machine's load between the table's timings and this run.
    """

    latency: LatencyModel
    target_speedup: float
    width_step: int = 1
    baseline_ms: float = 0.0
    input_ms: float = 0.0
    start_ms: float = 0.0

    def begin(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.input_shape = tuple(input_shape)
        self.start_ms = self.latency.calibrate(model, self.input_shape)
        self.model = copy.deepcopy(model)  # the input, kept for the final measurement (the pruner edits in place)
        self.baseline_ms, self.input_ms = self.latency.fp32_gain(self.model, self.input_shape)

    @property
    def gain(self) -> float:
        """The deployed precision's measured speed-up over FP32 on the input model."""
        return self.baseline_ms / self.input_ms

    @property
    def budget_ms(self) -> float:
        return self.start_ms * self.gain / self.target_speedup

    def predicted(self, model: nn.Module) -> float:
        return self.latency.predict(model, self.input_shape)

    def step_budget(self, goal: float) -> float:
        """HALP's schedule: the budget falls linearly from the start to the final budget as ``goal`` goes 0 → 1."""
        return self.start_ms - min(goal, 1.0) * max(self.start_ms - self.budget_ms, 0.0)

    def options(self, model: nn.Module, groups: list[Group], scores: np.ndarray, floors: dict[str, int],
                layers: list[Layer]) -> list[LayerOptions]:
        """Candidate widths of every layer with their importance and latency change (other layers as they are)."""
        plans = []
        for key, idx in _by_layer(groups).items():
            ranked_idx = sorted(idx, key=lambda i: -scores[i])
            ranked = [groups[i] for i in ranked_idx]
            kept, shapes = width_options(ranked, conv_widths(model), floors, layers, self.width_step)
            own = dict(zip(*_unique_costs(self.latency, shapes)))
            # In predicted milliseconds, as the budget: a runtime that fuses across layers (scale < 1) saves only
            # its share of a layer's own cost.
            costs = self.latency.scale * np.array([sum(own[s] for s in row) for row in shapes])
            values = np.array([float(scores[ranked_idx][:j].sum()) for j in kept])
            plans.append(LayerOptions(key, ranked, kept, values, costs - costs[0]))
        return plans

    def select(self, model: nn.Module, groups: list[Group], scores: np.ndarray, floors: dict[str, int],
               budget_ms: float) -> list[Group]:
        """The groups to remove so that the predicted model fits ``budget_ms`` with the most importance kept; the
        knapsack's budget is tightened until the exact prediction of the pruned model fits (coupled layers make
        per-layer costs approximate). When the room left falls to the cheapest widths allowed, those; after 12
        tightenings, the last (tightest) choice, whose miss ``record`` reports as not reached."""
        layers = describe(model, self.input_shape)
        plans = self.options(model, groups, scores, floors, layers)
        now = self.latency.predict_shapes([layer.shape for layer in layers])
        room, floor = budget_ms - now, sum(float(np.min(p.costs)) for p in plans)
        chosen: list[Group] = []
        for _ in range(12):
            picks = knapsack([p.values for p in plans], [p.costs for p in plans], max(room, floor))
            chosen = [g for p, j in zip(plans, picks) for g in p.removed(j)]
            after = self.latency.predict_shapes([shape_after(layer, removed_members(chosen)) for layer in layers])
            if after <= budget_ms + 1e-9 or room <= floor:
                break
            room -= after - budget_ms
        return chosen

    def record(self, model: nn.Module, measure: bool = True) -> dict:
        """Predicted and (``measure``) measured latency of the pruned model, and both speed-ups over the baseline."""
        predicted = self.predicted(model)
        out = {
            "target": self.latency.table.target.name, "precision": self.latency.precision,
            "batch": self.latency.batch, "table": str(self.latency.table.path),
            "baseline_fp32_ms": self.baseline_ms, "input_measured_ms": self.input_ms, "precision_gain": self.gain,
            "input_predicted_ms": self.start_ms, "target_speedup": self.target_speedup, "budget_ms": self.budget_ms,
            "predicted_ms": predicted, "predicted_speedup": self.gain * self.start_ms / predicted,
            "reached": predicted <= self.budget_ms * (1 + 1e-9),
        }
        if measure:
            baseline, measured = self.latency.against_fp32((self.model, model), self.input_shape)
            out.update(measured_baseline_fp32_ms=baseline, measured_ms=measured,
                       measured_speedup=speedup(baseline, measured))
        return out


def _unique_costs(latency: LatencyModel, rows: list[list]) -> tuple[list, list[float]]:
    unique = sorted({s for row in rows for s in row})
    return unique, latency.layer_ms(unique)


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _by_layer(groups: list[Group]) -> dict[tuple[str, ...], list[int]]:
    by_key: dict[tuple[str, ...], list[int]] = {}
    for i, g in enumerate(groups):
        by_key.setdefault(g.layer_key, []).append(i)
    return by_key


def width_options(ranked: list[Group], widths: dict[str, int], floors: dict[str, int], layers: list[Layer],
                  width_step: int = 1) -> tuple[list[int], list[list[LayerShape]]]:
    """For one layer's groups (most important first): the kept counts the floors and ``width_step`` allow, from all
    kept down, and for each the shapes of the model layers those groups touch."""
    names = {n for g in ranked for kind in ("sources", "depthwise", "consumers", "batchnorms", "pads")
             for n, _ in getattr(g, kind)}
    touched = [layer for layer in layers if any(name in names for _, name in (*layer.cin_refs, *layer.cout_refs))]
    key = ranked[0].layer_key
    kept, shapes = [], []
    for j in range(len(ranked), -1, -1):
        removed = removed_members(ranked[j:])
        if any(widths[n] - removed[("sources", n)] < floors.get(n, 1) for n in key):
            break
        if j < len(ranked) and (widths[key[0]] - removed[("sources", key[0])]) % width_step:
            continue
        kept.append(j)
        shapes.append([shape_after(layer, removed) for layer in touched])
    return kept, shapes


def profile_shapes(model: nn.Module, input_shape: tuple[int, ...], scope: str = "inner", width_step: int = 1,
                   min_channels: float = 1.0) -> list[LayerShape]:
    """Every layer shape the prune pass may ask the latency table for on ``model``: the model itself and each
    prunable layer at each candidate width with the others whole (what ``compressor profile`` times)."""
    graph = DependencyGraph(model, tuple(input_shape))
    groups = [g for g in graph.groups() if scope == "all" or not g.residual]
    widths = conv_widths(model)
    floors = {n: max(1, math.ceil(min_channels * w) if min_channels < 1 else int(min_channels)) for n, w in widths.items()}
    layers = describe(model, tuple(input_shape))
    shapes = {layer.shape for layer in layers}
    for idx in _by_layer(groups).values():
        shapes.update(s for row in width_options([groups[i] for i in idx], widths, floors, layers, width_step)[1]
                      for s in row)
    return sorted(shapes)
