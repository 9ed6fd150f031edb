"""The ``quantize`` pass: Quantune-style searched post-training INT8 quantization (Lee et al., arXiv 2202.05048).

The float model is exported to ONNX; a search strategy (XGBoost tuner by default, warm-started from the shipped
measurement database) measures configurations of ``compressor.quant.space`` as INT8 QDQ models in ONNX Runtime
on the validation split; the best one is written to ``out_dir``. Baseline strategies can be run with the same
budget for the search-history plot. Finally INT8 and FP32 ORT-CPU latency are measured interleaved; whether the
pipeline deploys INT8 when it is not faster is ``fallback_to_fp32_if_slower``'s call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import onnx
from torch import nn

from compressor.core.files import atomic_path
from compressor.errors import CompressorError
from compressor.passes.base import Context, PassResult, register_pass
from compressor.quant.latency import candidates, deployment, measure_isolated, speed_check
from compressor.quant.problem import QuantProblem, top1_onnx
from compressor.quant.qdq_rules import check_tensorrt
from compressor.quant.space import TARGETS
from compressor.quant.tuner import (
    DEFAULT_DB,
    Budget,
    GeneticSearch,
    GridSearch,
    RandomSearch,
    SearchResult,
    XGBoostTuner,
    load_db,
    model_descriptors,
    search,
)
from compressor.runtime.export import export_onnx

STRATEGIES = ("xgboost", "random", "ga", "grid")


def save_atomic(model: onnx.ModelProto, path: Path) -> Path:
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
    return path


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


@register_pass
class Quantize:
    """Searched INT8 PTQ for ONNX Runtime CPU (``ort-cpu``) or TensorRT-compliant QDQ (``tensorrt``)."""

    name: ClassVar[str] = "quantize"
    # Each model is timed in its own process (see quant.latency); tests replace this to inject latencies.
    measure_latency = staticmethod(measure_isolated)

    @dataclass
    class Config:
        """target: ort-cpu | tensorrt. strategy: xgboost | random | ga | grid. max_evals / max_seconds /
        max_accuracy_drop (points below FP32 validation top-1 that end the search early): the budget.
        baselines: also run these strategies with the same budget for the history plot.
        warm_start_db: measurement database for the XGBoost tuner ("" = the shipped one, "none" = no transfer).
        mixed_fraction: share of weighted layers kept in float by mixed precision (the most sensitive ones).
        accuracy_tolerance / latency_candidates: up to that many configurations within that many points of the
        best validation top-1 (plus, on ort-cpu, the best fully fusable one) are timed against FP32.
        speed_accuracy_budget: points of validation top-1 the pass may give up for an INT8 model that is faster
        than FP32; the most accurate such candidate is written, else the most accurate candidate.
        fallback_to_fp32_if_slower: deploy FP32 when INT8 is not faster than FP32 on ORT-CPU.
        min_speedup / latency_batch / threads: the speed-up INT8 must reach at batch 1 and at ``latency_batch``,
        timed with that many ORT intra-op threads, each model in its own process (``measure_isolated``)."""

        target: str = "ort-cpu"
        strategy: str = "xgboost"
        max_evals: int = 12
        max_seconds: float | None = None
        max_accuracy_drop: float | None = None
        baselines: tuple[str, ...] = ()
        warm_start_db: str = ""
        mixed_fraction: float = 0.1
        fallback_to_fp32_if_slower: bool = True
        accuracy_tolerance: float = 0.1
        latency_candidates: int = 3
        speed_accuracy_budget: float = 0.5
        min_speedup: float = 1.0
        latency_batch: int = 64
        threads: int = 2

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()
        c = self.config
        if c.target not in TARGETS:
            raise CompressorError(f"quantize.target={c.target!r}; choose one of {list(TARGETS)}")
        for s in (c.strategy, *c.baselines):
            if s not in STRATEGIES:
                raise CompressorError(f"quantize strategy {s!r}; choose from {list(STRATEGIES)}")

    def _strategy(self, name: str, descriptors: dict, fp32: float):
        if name == "xgboost":
            db_path = self.config.warm_start_db
            db = [] if db_path == "none" else load_db(db_path or DEFAULT_DB) if (db_path or DEFAULT_DB.exists()) else []
            return XGBoostTuner(descriptors, fp32, db)
        return {"random": RandomSearch, "ga": GeneticSearch, "grid": GridSearch}[name]()

    def run(self, model: nn.Module, ctx: Context) -> PassResult:
        c = self.config
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        fp32_path = export_onnx(model, ctx.out_dir / "quantize_fp32.onnx", ctx.input_shape)
        problem = QuantProblem(onnx.load(fp32_path), ctx.splits.calibration, ctx.splits.validation, ctx.preprocess,
                               c.target, c.mixed_fraction)
        fp32_val = top1_onnx(problem.float_model, ctx.splits.validation, ctx.preprocess)
        descriptors = model_descriptors(model, problem.float_model)
        target_acc = None if c.max_accuracy_drop is None else fp32_val - c.max_accuracy_drop
        budget = Budget(c.max_evals, c.max_seconds, target_acc)
        space = problem.space()
        results = [
            search(self._strategy(s, descriptors, fp32_val), space, problem.evaluate, budget, ctx.seed)
            for s in (c.strategy, *[b for b in c.baselines if b != c.strategy])
        ]
        # Candidates: the configurations within accuracy_tolerance of the best, plus (ort-cpu) the most accurate one
        # whose emission ORT fuses completely. Deploy the most accurate candidate that is measured faster than FP32
        # and within speed_accuracy_budget of the best; if none is, the most accurate one (fallback decides).
        pool = candidates(problem.results, c.accuracy_tolerance, c.latency_candidates)
        fusable = [cfg for cfg in problem.results if cfg.scheme != "symmetric" and cfg.precision == "int8"]
        if c.target == "ort-cpu" and fusable:
            top = max(fusable, key=problem.results.get)
            if top not in pool:
                pool.append(top)
        models = {f"int8:{cfg.key()}": problem.build(cfg) for cfg in pool}
        images = ctx.preprocess(ctx.splits.validation.images[: c.latency_batch]).numpy()
        lat = self.measure_latency({"fp32": problem.float_model, **models}, images, c.latency_batch, c.threads,
                                  progress=ctx.progress)
        checks = {cfg: speed_check(lat["fp32"], lat[f"int8:{cfg.key()}"], c.min_speedup) for cfg in pool}
        best_acc = max(problem.results.values())
        fast = [cfg for cfg in pool if checks[cfg]["int8_faster"]
                and problem.results[cfg] >= best_acc - max(c.speed_accuracy_budget, c.accuracy_tolerance)]
        best = max(fast or pool, key=lambda cfg: (problem.results[cfg], lat[f"int8:{cfg.key()}"].throughput))
        qdq = models[f"int8:{best.key()}"]
        speed = checks[best]
        int8_path = save_atomic(qdq, ctx.out_dir / "quantized_int8.onnx")
        plot = plot_history(results, fp32_val, ctx.out_dir / "quantize_search.png")
        # ORT-CPU speed says nothing about a TensorRT engine, so it never vetoes the tensorrt target's INT8 model.
        fallback = c.fallback_to_fp32_if_slower and c.target == "ort-cpu"
        deploy = deployment(speed["int8_faster"], fallback)
        details = {
            "onnx_path": str(int8_path),
            "fp32_onnx_path": str(fp32_path),
            "target": c.target,
            "config": best.as_dict(),
            "float_layers": problem.float_layers(best),
            "val_top1": problem.results[best],
            "latency_candidates": {
                cfg.key(): {**lat[f"int8:{cfg.key()}"].as_dict(), "val_top1": problem.results[cfg]} for cfg in pool
            },
            "fp32_val_top1": fp32_val,
            "evaluations": problem.evaluations,
            "calibration_runs": problem.calibrator.runs,
            "search": [r.as_dict() for r in results],
            "history_plot": str(plot),
            **speed,
            "fallback_to_fp32_if_slower": fallback,
            "deploy": deploy,
        }
        if not speed["int8_faster"]:
            details["speed_note"] = (
                f"INT8 is not faster than FP32 on ORT-CPU here (throughput x{speed['throughput_speedup']}, batch-1 "
                f"x{speed['batch1_speedup']}); deploying {deploy.upper()}"
                + ("" if c.target == "ort-cpu" else " (the tensorrt target is not judged by ORT-CPU speed)")
            )
        if c.target == "tensorrt":
            details["tensorrt_violations"] = check_tensorrt(qdq)
        return PassResult(model, details)
