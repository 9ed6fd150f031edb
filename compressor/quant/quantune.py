"""Quantune-style searched post-training INT8 quantization (Lee et al., arXiv 2202.05048).

The float model is exported to ONNX; a search strategy (XGBoost tuner by default, warm-started from the shipped
measurement database) measures configurations of :mod:`compressor.quant.space` as INT8 QDQ models on the
validation split, run in the target's runtime (OpenVINO for openvino-cpu, ONNX Runtime otherwise). The space
includes the CNN PTQ toolbox as knobs (cross-layer equalization, bias correction, AdaRound, MSE ranges). The most
accurate candidates are timed against FP32 on the target's CPU runtime (:mod:`compressor.runtime.latency`) and
:mod:`compressor.quant.selection` picks the one to write. With an accuracy goal that no configuration meets,
:mod:`compressor.quant.fallback` sends layers back to float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
from torch import nn

from compressor.core.config import param, validate
from compressor.core.context import Context
from compressor.core.files import atomic_path
from compressor.quant.adaround import AdaRoundSettings
from compressor.quant.fallback import Fallback, accuracy_fallback, module_name
from compressor.quant.problem import QuantProblem, top1_onnx
from compressor.quant.qdq_rules import check_tensorrt
from compressor.quant.selection import choose, deployment, latency_pool, retimer, speed_check
from compressor.quant.space import TARGETS
from compressor.quant.tuner import (
    DEFAULT_DB,
    Budget,
    GeneticSearch,
    GridSearch,
    RandomSearch,
    XGBoostTuner,
    load_db,
    model_descriptors,
    plot_history,
    search,
)
from compressor.runtime.export import export_onnx
from compressor.runtime.latency import measure_isolated
from compressor.runtime.openvino import int8_summary

STRATEGIES = ("xgboost", "random", "ga", "grid")
SWITCH = ("search", True, False)


@dataclass
class QuantizeConfig:
    """target: ort-cpu | openvino-cpu | tensorrt. strategy: xgboost | random | ga | grid. max_evals / max_seconds:
    the budget. batch: configurations proposed per round and evaluated together (in parallel under a parallel
    executor) between refits of the tuner; 1 is Quantune's one-at-a-time search. Independent of the executor's
    workers.
    max_accuracy_drop: the accuracy goal, in points below FP32 validation top-1; the search stops once a
    configuration meets it, and when none does, up to max_float_layers layers go back to float, most sensitive
    first, until it holds (the report lists them).
    cle / bias_correction / adaround: search (a knob of the space), true or false (YAML on / off). adaround_iterations: AdaRound's
    steps per layer. weight_images: calibration images AdaRound and bias correction use.
    keep_float: module-name patterns (fnmatch, e.g. "layer3.*", "linear") never quantized.
    baselines: also run these strategies with the same budget for the history plot.
    warm_start_db: measurement database for the XGBoost tuner ("" = the shipped one, "none" = no transfer).
    mixed_fraction: share of weighted layers kept in float by mixed precision (the most sensitive ones).
    accuracy_tolerance / latency_candidates: up to that many configurations within that many points of the
    best validation top-1 (plus, on ort-cpu, the best fully fusable one) are timed against FP32.
    speed_accuracy_budget: points of validation top-1 the pass may give up for speed: of the timed candidates
    faster than FP32 within that many points of the best (and meeting max_accuracy_drop when set), the fastest
    by ``min_speed_gain`` is written, else the most accurate (:func:`compressor.quant.selection.choose`).
    min_speed_gain: a less accurate candidate (or a later one of equal accuracy) replaces the choice only when its
    batch throughput is more than ``1 + min_speed_gain`` times the choice's beyond noise.
    confirm_rounds: a pair whose first timing is close is timed again, the two alone, with this many paired rounds
    before that gain decides; on a shared host five rounds cannot tell a small gain from noise, and the written
    model would depend on the run. 0: the first five rounds decide (raise min_speed_gain to 0.5 with it there).
    fallback_to_fp32_if_slower: deploy FP32 when INT8 is not faster than FP32 on the target's CPU runtime
    (ort-cpu, openvino-cpu). "Faster" means beyond the measured noise (all paired timing rounds but the most
    extreme quarter); a speed-up within the noise counts as not faster (:mod:`compressor.quant.selection`), so
    jitter does not decide the deployed model.
    min_speedup / latency_batch / threads: the speed-up INT8 must reach at batch 1 and at ``latency_batch``,
    timed with that many threads, each model in its own process (``measure_isolated``); on openvino-cpu both
    models run with the recipe's OpenVINO precision hint."""

    target: str = param("ort-cpu", choices=TARGETS)
    strategy: str = param("xgboost", choices=STRATEGIES)
    max_evals: int = param(12, ge=1)
    max_seconds: float | None = param(None, gt=0)
    max_accuracy_drop: float | None = param(None, ge=0)
    batch: int = param(4, ge=1)
    max_float_layers: int = param(8, ge=0)
    cle: str | bool = param("search", choices=SWITCH)
    bias_correction: str | bool = param("search", choices=SWITCH)
    adaround: str | bool = param("search", choices=SWITCH)
    adaround_iterations: int = param(300, ge=1)
    weight_images: int = param(256, ge=1)
    keep_float: tuple[str, ...] = ()
    baselines: tuple[str, ...] = param((), choices=STRATEGIES)
    warm_start_db: str = ""
    mixed_fraction: float = param(0.1, gt=0, lt=1)
    fallback_to_fp32_if_slower: bool = True
    accuracy_tolerance: float = param(0.1, ge=0)
    latency_candidates: int = param(3, ge=1)
    speed_accuracy_budget: float = param(0.5, ge=0)
    min_speed_gain: float = param(0.05, ge=0)
    confirm_rounds: int = param(15, ge=0)
    min_speedup: float = param(1.0, gt=0)
    latency_batch: int = param(64, ge=1)
    threads: int = param(2, ge=1)


@dataclass
class QuantuneResult:
    int8_path: Path
    fp32_path: Path
    plot: Path
    deploy: bool  # False: INT8 was not faster on ort-cpu and the fallback to FP32 is on
    record: dict


class Quantune:
    """Search, time and write the INT8 model of one float model into ``ctx.out_dir``. ``measure_latency`` has
    :func:`compressor.runtime.latency.measure_isolated`'s signature (it gets ``rounds`` for a second timing)."""

    def __init__(self, config: QuantizeConfig | None = None, measure_latency: Callable = measure_isolated) -> None:
        self.config = validate(config or QuantizeConfig(), "quantize")
        self.measure_latency = measure_latency

    def _strategy(self, name: str, descriptors: dict, fp32: float):  # noqa: ANN202
        if name == "xgboost":
            db_path = self.config.warm_start_db
            db = [] if db_path == "none" else load_db(db_path or DEFAULT_DB) if (db_path or DEFAULT_DB.exists()) else []
            return XGBoostTuner(descriptors, fp32, db)
        return {"random": RandomSearch, "ga": GeneticSearch, "grid": GridSearch}[name]()

    def problem(self, float_onnx: onnx.ModelProto, ctx: Context) -> QuantProblem:
        c = self.config
        restrict = {k: (getattr(c, k),) for k in ("cle", "bias_correction", "adaround") if getattr(c, k) != "search"}
        return QuantProblem(float_onnx, ctx.splits.calibration, ctx.splits.validation, ctx.preprocess, c.target,
                            c.mixed_fraction, keep_float=c.keep_float, restrict=restrict,
                            adaround=AdaRoundSettings(iterations=c.adaround_iterations), weight_images=c.weight_images,
                            seed=ctx.seed, progress=ctx.progress, precision=ctx.openvino_precision)

    def run(self, model: nn.Module, ctx: Context) -> QuantuneResult:
        c = self.config
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        fp32_path = export_onnx(model, ctx.out_dir / "quantize_fp32.onnx", ctx.input_shape)
        openvino = c.target == "openvino-cpu"
        problem = self.problem(onnx.load(fp32_path), ctx)
        fp32_val = top1_onnx(problem.float_model, ctx.splits.validation, ctx.preprocess, target=c.target,
                             precision=ctx.openvino_precision)
        descriptors = model_descriptors(model, problem.float_model)
        target_acc = None if c.max_accuracy_drop is None else fp32_val - c.max_accuracy_drop
        budget = Budget(c.max_evals, c.max_seconds, target_acc)
        space = problem.space()
        results = [
            search(self._strategy(s, descriptors, fp32_val), space, problem.evaluate, budget, ctx.seed, batch=c.batch,
                   evaluate_many=lambda configs: problem.evaluate_many(configs, ctx.executor))
            for s in (c.strategy, *[b for b in c.baselines if b != c.strategy])
        ]
        goal: Fallback | None = None  # the accuracy goal's layer-by-layer fallback, when the search missed it
        scores, extra = problem.results, ()
        if target_acc is not None and max(scores.values()) < target_acc:
            top = min(scores, key=lambda k: (-scores[k], k))
            goal = accuracy_fallback(problem, top, target_acc, c.max_float_layers, ctx.progress)
            scores, extra = {top: goal.val_top1}, tuple(goal.nodes)
        ctx.executor.release()  # the candidates are timed below, with no worker beside them
        pool = latency_pool(scores, c.target, c.accuracy_tolerance, c.latency_candidates)
        models = {f"int8:{cfg.key()}": problem.build(cfg, extra) for cfg in pool}
        images = ctx.preprocess(ctx.splits.validation.images[: c.latency_batch]).numpy()
        on = {"backend": "openvino", "precision": ctx.openvino_precision} if openvino else {}  # else ONNX Runtime
        timed = self.measure_latency({"fp32": problem.float_model, **models}, images, c.latency_batch, c.threads,
                                     progress=ctx.progress, **on)
        lat = {cfg: timed[f"int8:{cfg.key()}"] for cfg in pool}
        checks = {cfg: speed_check(timed["fp32"], lat[cfg], c.min_speedup) for cfg in pool}
        confirmations: list[dict] = []
        retime = retimer(self.measure_latency, models, images, c.latency_batch, c.threads, c.confirm_rounds,
                         confirmations, progress=ctx.progress, **on)
        best, choice_rule = choose(pool, scores, lat, checks, c.speed_accuracy_budget, c.accuracy_tolerance,
                                   floor=target_acc, min_speed_gain=c.min_speed_gain,
                                   retime=retime if c.confirm_rounds else None)
        qdq, speed = models[f"int8:{best.key()}"], checks[best]
        with atomic_path(ctx.out_dir / "quantized_int8.onnx") as tmp:
            onnx.save(qdq, tmp)
        plot = plot_history(results, fp32_val, ctx.out_dir / "quantize_search.png")
        # ORT-CPU speed says nothing about a TensorRT engine, so it never vetoes the tensorrt target's INT8 model.
        fallback = c.fallback_to_fp32_if_slower and c.target != "tensorrt"
        runtime = "OpenVINO" if openvino else "ORT-CPU"
        deploy = deployment(speed["int8_faster"], fallback)
        record = {
            "target": c.target,
            "int8_config": best.as_dict(),
            "choice_rule": choice_rule,
            "float_layers": [module_name(n) for n in [*problem.float_layers(best), *extra]],
            "val_top1": scores[best],
            "latency_candidates": {cfg.key(): {**lat[cfg].as_dict(), "val_top1": scores[cfg]} for cfg in pool},
            "confirmations": confirmations,
            "fp32_val_top1": fp32_val,
            "evaluations": problem.evaluations,
            "calibration_runs": problem.calibration_runs,
            "accuracy_goal": None if goal is None else goal.as_dict(),
            "equalization": None if problem.equalization is None else problem.equalization.as_dict(),
            "weight_tables": problem.weight_summaries(),
            "search": [r.as_dict() for r in results],
            **speed,
            "fallback_to_fp32_if_slower": fallback,
            "deploy": deploy,
        }
        if not speed["int8_faster"]:
            why = "within the measured noise" if speed["speed_verdict"] == "within noise" else "measured beyond noise"
            record["speed_note"] = (
                f"INT8 is not faster than FP32 on {runtime} here ({why}; median throughput x{speed['throughput_speedup']}, "
                f"batch-1 x{speed['batch1_speedup']}); deploying {deploy.upper()}"
                + ("" if c.target != "tensorrt" else " (the tensorrt target is not judged by ORT-CPU speed)")
            )
        if c.target == "tensorrt":
            record["tensorrt_violations"] = check_tensorrt(qdq)
        if openvino:  # from OpenVINO's execution graph, not from the graph we emitted
            record["openvino_precision"] = ctx.openvino_precision
            record["openvino_int8"] = int8_summary(qdq.SerializeToString(), ctx.openvino_precision)
        return QuantuneResult(ctx.out_dir / "quantized_int8.onnx", fp32_path, plot, deploy == "int8", record)
