"""Search strategies over the quantization space: Quantune's XGBoost tuner and its random, grid and GA baselines.

Quantune (Lee et al., arXiv 2202.05048, 2022): features are the one-hot configuration plus model descriptors
(#nodes, #conv, #bn, #act, #skip, #depthwise, #pointwise, size in MB); an XGBoost regressor (reg:squarederror, 200
rounds) learns from measurements of *other* models (leave-current-model-out transfer) and from what has been
measured on this model so far, predicts every unexplored configuration; the top prediction is measured, added, and
the regressor refit. The label here is the accuracy change against the model's own FP32 validation top-1, so
measurements of models with different base accuracy share one scale.

Two departures, each measured (docs/lab-notes/quant-toolbox.md, section 7):

- eta and gamma are picked the paper's way, a 5-fold cross-validation grid over eta 0.1–0.4 and gamma 0–5, but on
  our database (``benchmarks/quant_search.py cv``): eta 0.1, gamma 0. The prior below, which predicts a model it
  has never seen, takes the gamma the same grid picks when scored leaving one model out: 5. The paper's eta 0.15 /
  gamma 3 came from its ImageNet data; gamma is the least loss reduction a split must bring, in squared points,
  and on our flat spaces, where configurations differ by tenths of a point, gamma 3 forbids almost every split
  that a model's own few measurements could make.
- ``transfer="prior"`` (the default) combines the two data sources as AutoTVM's XGBoost cost model does (Chen et
  al., NeurIPS 2018; TVM's ``XGBoostCostModel``): a prior regressor is trained once on the database, and the online
  regressor is trained on this model's measurements alone, starting from the prior's prediction scaled by
  2^(−n/64) after n measurements (dropped below 0.05). Quantune pools both sources in one regressor
  (``transfer="pooled"``); there thousands of other models' records outweigh a few dozen of this one's.

Every strategy proposes unexplored configurations in rounds of ``batch``; ``search`` owns the loop and the three
stopping rules (evaluation budget, time budget, accuracy target), so all strategies are compared under the same
budget. A round's configurations are evaluated together (in parallel under a parallel executor) and the XGBoost
model is refit between rounds, as AutoTVM's XGBTuner measures a planned batch between refits (Chen et al.,
"Learning to Optimize Tensor Programs", NeurIPS 2018). ``batch`` 1 is Quantune's one-at-a-time loop. The batch is a
setting of the search, never the number of workers, so under an evaluation budget the trajectory does not depend
on where it runs (a time budget, ``max_seconds``, ends after as many rounds as the executor finished).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
from torch import nn

from compressor.core.files import save_figure
from compressor.quant.space import KNOBS, QuantConfig

DEFAULT_DB = Path(__file__).resolve().parent / "quantune_db.json"
DESCRIPTORS = ("nodes", "conv", "bn", "act", "skip", "depthwise", "pointwise", "size_mb")
XGB_PARAMS = {"objective": "reg:squarederror", "eta": 0.1, "gamma": 0.0, "max_depth": 6, "nthread": 1}
# The prior predicts a model it has never seen: its gamma is what the same grid picks scored leaving one model out.
PRIOR_PARAMS = {**XGB_PARAMS, "gamma": 5.0}
XGB_ROUNDS = 200
PRIOR_HALF_LIFE = 64.0  # measurements of this model after which the prior's prediction counts half (AutoTVM's)
TRANSFERS = ("prior", "pooled")


def set_params(eta: float | None = None, gamma: float | None = None, prior_gamma: float | None = None) -> None:
    """Replay other XGBoost settings (the benchmarks' ``--eta``, ``--gamma``, ``--prior-gamma``): eta and gamma set
    both regressors, then ``prior_gamma`` the prior's own; None keeps a value."""
    global XGB_PARAMS, PRIOR_PARAMS
    both = {k: v for k, v in (("eta", eta), ("gamma", gamma)) if v is not None}
    XGB_PARAMS = {**XGB_PARAMS, **both}
    PRIOR_PARAMS = {**PRIOR_PARAMS, **both, **({} if prior_gamma is None else {"gamma": prior_gamma})}


def model_descriptors(module: nn.Module, float_onnx: onnx.ModelProto) -> dict[str, float]:
    """Quantune's model descriptors: layer counts from the PyTorch module, node and skip counts from the graph."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return {
        "nodes": float(len(float_onnx.graph.node)),
        "conv": float(len(convs)),
        "bn": float(sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())),
        "act": float(sum(isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU)) for m in module.modules())),
        "skip": float(sum(n.op_type in ("Add", "Sum") for n in float_onnx.graph.node)),
        "depthwise": float(sum(c.groups > 1 and c.groups == c.in_channels for c in convs)),
        "pointwise": float(sum(c.kernel_size == (1, 1) and c.groups == 1 for c in convs)),
        "size_mb": sum(p.numel() * p.element_size() for p in module.parameters()) / 1e6,
    }


def features(config: QuantConfig, descriptors: dict[str, float]) -> list[float]:
    return config.one_hot() + [float(descriptors[k]) for k in DESCRIPTORS]


def feature_matrix(rows: list[list[float]]) -> np.ndarray:
    """Rows of :func:`features` as one (n, features) array, also when there are none."""
    return np.asarray(rows, dtype=float).reshape(len(rows), len(QuantConfig().one_hot()) + len(DESCRIPTORS))


@dataclass
class Record:
    """One real measurement: a model (by name and descriptors), a configuration and its validation accuracy."""

    model: str
    descriptors: dict[str, float]
    config: QuantConfig
    val_top1: float
    fp32_val_top1: float

    @property
    def delta(self) -> float:
        return self.val_top1 - self.fp32_val_top1


def load_db(path: str | Path = DEFAULT_DB) -> list[Record]:
    """The shipped measurement database (``benchmarks/build_quantune_db.py`` writes it)."""
    data = json.loads(Path(path).read_text())
    out = []
    for m in data["models"]:
        for r in m["results"]:
            out.append(Record(m["model"], m["descriptors"], QuantConfig(**r["config"]), r["val_top1"], m["fp32_val_top1"]))
    return out


@dataclass
class Budget:
    """Stop after ``max_evals`` evaluations, ``max_seconds`` of wall time, or once ``target_accuracy`` is reached."""

    max_evals: int = 20
    max_seconds: float | None = None
    target_accuracy: float | None = None


@dataclass
class Step:
    config: QuantConfig
    val_top1: float
    best: float
    seconds: float


@dataclass
class SearchResult:
    strategy: str
    steps: list[Step] = field(default_factory=list)
    stop: str = ""

    @property
    def best(self) -> Step:
        return max(self.steps, key=lambda s: s.val_top1)

    def curve(self) -> list[float]:
        """Best accuracy so far after each evaluation."""
        return [s.best for s in self.steps]

    def as_dict(self) -> dict:
        return {
            "strategy": self.strategy, "stop": self.stop, "best_config": self.best.config.as_dict(),
            "best_val_top1": self.best.val_top1, "curve": self.curve(),
            "steps": [{"config": s.config.key(), "val_top1": s.val_top1, "seconds": round(s.seconds, 3)} for s in self.steps],
        }


class Strategy(Protocol):
    name: str

    def propose(self, measured: dict[QuantConfig, float], unexplored: list[QuantConfig], rng: random.Random) -> QuantConfig: ...


def propose_batch(strategy: Strategy, measured: dict[QuantConfig, float], unexplored: list[QuantConfig],
                  rng: random.Random, k: int) -> list[QuantConfig]:
    """``k`` distinct unexplored configurations for one round: the strategy's own ``propose_batch`` when it has
    one (the XGBoost tuner ranks every configuration once), else ``propose`` repeated on what is left."""
    if hasattr(strategy, "propose_batch"):
        return strategy.propose_batch(measured, unexplored, rng, k)
    left, out = list(unexplored), []
    for _ in range(min(k, len(left))):
        out.append(strategy.propose(measured, left, rng))
        left.remove(out[-1])
    return out


class RandomSearch:
    name = "random"

    def propose(self, measured, unexplored, rng):
        return rng.choice(unexplored)


class GridSearch:
    """Exhaustive enumeration in the space's fixed order."""

    name = "grid"

    def propose(self, measured, unexplored, rng):
        return unexplored[0]


class GeneticSearch:
    """Steady-state genetic algorithm over the knobs: tournament selection, uniform crossover, per-knob mutation
    (Quantune's GA baseline encodes the same knobs in 6–7 bits). Children already measured are re-drawn."""

    name = "ga"

    def __init__(self, population: int = 6, mutation: float = 0.25, tournament: int = 2):
        self.population, self.mutation, self.tournament = population, mutation, tournament

    def propose(self, measured, unexplored, rng):
        if len(measured) < self.population:
            return rng.choice(unexplored)
        pool = sorted(measured.items(), key=lambda kv: -kv[1])[: max(self.population, len(measured) // 2)]
        allowed = set(unexplored)
        for _ in range(50):
            a, b = (max(rng.sample(pool, min(self.tournament, len(pool))), key=lambda kv: kv[1])[0] for _ in range(2))
            child = {}
            for knob, values in KNOBS.items():
                child[knob] = getattr(a if rng.random() < 0.5 else b, knob)
                if rng.random() < self.mutation:
                    child[knob] = rng.choice(values)
            cand = QuantConfig(**child)
            if cand in allowed:
                return cand
        return rng.choice(unexplored)


class XGBoostTuner:
    """Quantune's transfer + online tuner: refit on what has been measured, measure the top-predicted unexplored
    configuration (``propose``; ties broken by the search's seeded RNG). ``transfer`` says how the database of
    other models enters (module docstring): as a fading prior (``"prior"``) or pooled with this model's
    measurements (``"pooled"``, the paper's). A round of ``k`` > 1 between refits (``propose_batch``) is planned as
    AutoTVM's XGBTuner plans one with its diversity filter: the ``diversity × k`` top-predicted configurations, of
    which the ``k`` that differ most from each other (:func:`diverse_pick`); plain top-k would spend a round on
    near-duplicates the model cannot tell apart (calibration sizes that cap to the same images, say)."""

    name = "xgboost"

    def __init__(self, descriptors: dict[str, float], fp32_top1: float, db: list[Record] = (), model_name: str = "",
                 diversity: int = 2, transfer: str = "prior"):
        if transfer not in TRANSFERS:
            raise ValueError(f"XGBoostTuner transfer={transfer!r}; choose one of {list(TRANSFERS)}")
        self.descriptors, self.fp32, self.diversity, self.transfer = descriptors, fp32_top1, diversity, transfer
        # Leave the current model out of the transfer data: same name, or same architecture (descriptors).
        self.db = [r for r in db if r.model != model_name and r.descriptors != descriptors]
        self._db_x = feature_matrix([features(r.config, r.descriptors) for r in self.db])
        self._db_y = np.asarray([r.delta for r in self.db])
        self._prior = None

    def propose(self, measured, unexplored, rng):
        return self.propose_batch(measured, unexplored, rng, 1)[0]

    def propose_batch(self, measured, unexplored, rng, k):
        left = list(range(len(unexplored)))
        pred = self.predict(measured, unexplored, rng)
        if pred is None:  # nothing to learn from yet: random picks
            return [unexplored[left.pop(rng.randrange(len(left)))] for _ in range(min(k, len(left)))]
        ranked = []  # the best predictions in order, near-ties broken by the seeded RNG
        for _ in range(min(1 if k == 1 else self.diversity * k, len(left))):
            p = pred[left]
            best = np.flatnonzero(p >= p.max() - 1e-9)
            ranked.append(unexplored[left.pop(int(best[rng.randrange(len(best))]))])
        return diverse_pick(ranked, k)

    def predict(self, measured: dict[QuantConfig, float], configs: list[QuantConfig],
                rng: random.Random) -> np.ndarray | None:
        """Predicted accuracy change of each configuration, or None while there is too little data to fit. Each fit
        draws its XGBoost seed from ``rng``, so a search's stream stays reproducible."""
        import xgboost as xgb

        own_x = feature_matrix([features(c, self.descriptors) for c in measured])
        own_y = [v - self.fp32 for v in measured.values()]
        cand = feature_matrix([features(c, self.descriptors) for c in configs])
        if self.transfer == "pooled":
            if len(self.db) + len(own_y) < 2:
                return None
            x = np.concatenate([self._db_x, own_x])
            y = np.concatenate([self._db_y, own_y])
            return self._fit(XGB_PARAMS, x, y, None, rng).predict(xgb.DMatrix(cand))
        discount = 2.0 ** (-len(own_y) / PRIOR_HALF_LIFE) if self.db else 0.0
        discount = discount if discount >= 0.05 else 0.0  # AutoTVM drops a prior this faded
        if discount and self._prior is None:  # no subsampling, so the prior's seed changes nothing
            self._prior = self._fit(PRIOR_PARAMS, self._db_x, self._db_y, None, random.Random(0))
        prior = (lambda x: discount * self._prior.predict(xgb.DMatrix(x))) if discount else None
        if not own_y:
            return prior(cand) if prior else None
        if len(own_y) < 2 and not prior:
            return None
        # The online regressor fits what the margin leaves: the faded prior's prediction, or without a prior the
        # mean measured (set explicitly, so the intercept does not depend on XGBoost's own estimate).
        margin_of = prior or (lambda x: np.full(len(x), float(np.mean(own_y))))
        booster = self._fit(XGB_PARAMS, own_x, np.asarray(own_y), margin_of(own_x), rng)
        test = xgb.DMatrix(cand)
        test.set_base_margin(margin_of(cand))
        return booster.predict(test)

    @staticmethod
    def _fit(params: dict, x: np.ndarray, y: np.ndarray, margin: np.ndarray | None, rng: random.Random):
        import xgboost as xgb

        data = xgb.DMatrix(x, label=y)
        if margin is not None:
            data.set_base_margin(margin)
        return xgb.train({**params, "seed": rng.randrange(2**31)}, data, num_boost_round=XGB_ROUNDS)


def diverse_pick(ranked: list[QuantConfig], k: int) -> list[QuantConfig]:
    """AutoTVM's submodular pick (``submodular_pick`` with zero scores): from configurations ranked by predicted
    accuracy, take the best, then each time the one that adds the most knob values not yet in the batch, the
    better-ranked one on ties."""
    out, covered = [], {knob: set() for knob in KNOBS}
    left = list(ranked)
    for _ in range(min(k, len(left))):
        gain = [sum(getattr(c, knob) not in seen for knob, seen in covered.items()) for c in left]
        pick = left.pop(int(np.argmax(gain)))
        out.append(pick)
        for knob, seen in covered.items():
            seen.add(getattr(pick, knob))
    return out


def search(
    strategy: Strategy, space: list[QuantConfig], evaluate: Callable[[QuantConfig], float], budget: Budget,
    seed: int = 0, clock: Callable[[], float] = time.perf_counter, batch: int = 1,
    evaluate_many: Callable[[Sequence[QuantConfig]], list[float]] | None = None,
) -> SearchResult:
    """Measure rounds of ``batch`` proposed configurations until a budget or the accuracy target stops the search.

    ``evaluate_many`` (default: ``evaluate`` on each) measures a round's configurations together and returns
    their accuracies in order; the budgets are checked between rounds and a round never exceeds ``max_evals``.
    """
    rng = random.Random(f"{strategy.name}:{seed}")  # own stream per strategy, so the GA's start differs
    measure = evaluate_many or (lambda configs: [evaluate(c) for c in configs])
    measured: dict[QuantConfig, float] = {}
    result = SearchResult(strategy.name)
    start = clock()
    best = -np.inf
    while True:
        unexplored = [c for c in space if c not in measured]
        if not unexplored:
            result.stop = "space exhausted"
            break
        if len(measured) >= budget.max_evals:
            result.stop = "evaluation budget"
            break
        if budget.max_seconds is not None and clock() - start >= budget.max_seconds:
            result.stop = "time budget"
            break
        configs = propose_batch(strategy, measured, unexplored, rng, min(batch, budget.max_evals - len(measured)))
        accuracies = measure(configs)
        seconds = clock() - start
        for config, acc in zip(configs, accuracies):
            measured[config] = acc
            best = max(best, acc)
            result.steps.append(Step(config, acc, best, seconds))
        if budget.target_accuracy is not None and best >= budget.target_accuracy:
            result.stop = "accuracy target"
            break
    return result


def plot_history(results: list[SearchResult], fp32_top1: float, path: Path) -> Path:
    """Best validation top-1 so far against evaluations, one line per strategy; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(range(1, len(r.steps) + 1), r.curve(), marker="o", markersize=3, label=r.strategy)
    ax.axhline(fp32_top1, color="grey", linestyle="--", label="FP32")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best validation top-1 (%)")
    ax.set_title("INT8 configuration search")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
