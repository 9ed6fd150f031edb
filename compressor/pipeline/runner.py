"""The pipeline: load → passes → export → bench → report, driven by a recipe.

Every stage's model is saved under ``stages/`` with a fingerprint of the recipe prefix that produced it, so
``resume`` skips stages that are complete and intact. All inputs are checked before the output folder is touched.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.executors import SerialExecutor, make_executor
from compressor.core.files import copy_atomic
from compressor.core.metrics import agreement, count_macs, count_params, predict, top1
from compressor.core.models import load_user_model
from compressor.core.serialize import load_model, save_model
from compressor.errors import CompressorError, GateFailed
from compressor.passes import PASSES, Context
from compressor.pipeline.gate import evaluate_gate
from compressor.pipeline.recipe import Recipe, to_dict
from compressor.pipeline.report import Report, StageRecord, versions, write_report
from compressor.runtime.bench import BenchSettings, bench_onnx
from compressor.runtime.export import check_parity, export_onnx, ort_predict, ort_session


def prepare_out_dir(out_dir: Path) -> None:
    """Refuse a file or an unwritable location before any work is done."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CompressorError(f"output path {out_dir} is a file; give a folder path with --out")
    probe_parent = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not os.access(probe_parent, os.W_OK):
        raise CompressorError(f"output folder {out_dir} is not writable; choose another --out")


def stage_fingerprint(recipe: Recipe, upto: int) -> str:
    d = to_dict(recipe)
    key = {"model": d["model"], "data": d["data"], "seed": d["seed"], "passes": d["passes"][:upto]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pipeline:
    """Runs one recipe into one output folder."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, resume: bool = False, progress: bool = True):
        self.recipe, self.out_dir, self.resume, self.progress = recipe, Path(out_dir), resume, progress
        self.preprocess = Preprocess(tuple(recipe.model.mean), tuple(recipe.model.std))
        self.input_shape = tuple(recipe.model.input_shape)
        self.bench = BenchSettings(recipe.bench.warmup, recipe.bench.duration, 10, recipe.bench.threads)
        self.executor = SerialExecutor()

    def _check(self) -> None:
        r = self.recipe
        if not r.data.path:
            raise CompressorError("no data given: set data.path in the recipe or pass --data")
        if "onnx_int8" in r.export and not any(p.name == "quantize" for p in r.passes):
            raise CompressorError("export onnx_int8 needs a quantize pass in the recipe's passes")
        if "tensorrt" in r.export:
            from compressor.runtime.tensorrt import _import_tensorrt

            _import_tensorrt()  # fail before any work when TensorRT is absent
        if r.executor.kind == "ray":
            from compressor.core.ray_executor import _import_ray

            _import_ray()  # likewise Ray
        if r.budget.min_speedup is not None and not r.bench.enabled:
            raise CompressorError("budget.min_speedup needs bench.enabled: true (latency is measured by bench)")

    def _measure(self, record: StageRecord, model: nn.Module, onnx_path: Path, logits: np.ndarray,
                 teacher_logits: np.ndarray, teacher_top1: float | None) -> None:
        test = self.splits.test
        record.top1 = top1(logits, test.labels)
        record.delta_top1 = None if teacher_top1 is None else record.top1 - teacher_top1
        record.agreement = agreement(logits, teacher_logits)
        record.params = count_params(model)
        record.macs = count_macs(model, self.input_shape)
        record.onnx_path = str(onnx_path.relative_to(self.out_dir))
        record.onnx_size_mb = onnx_path.stat().st_size / 2**20
        if self.recipe.bench.enabled:
            self.executor.release()  # no worker beside a timing
            stats = {b: s[0] for b, s in bench_onnx([onnx_path], self.recipe.bench.batches, self.bench).items()}
            record.details["bench"] = stats
            if 1 in stats:
                record.latency_b1_p50_ms = stats[1]["latency_ms"]["median"]
            if 64 in stats:
                record.throughput_b64_img_s = stats[64]["throughput_img_s"]

    def run(self) -> Report:
        self.executor = make_executor(self.recipe.executor)
        try:
            return self._run()
        finally:
            self.executor.close()

    def _run(self) -> Report:
        t_start = time.perf_counter()
        r = self.recipe
        self._check()
        prepare_out_dir(self.out_dir)
        loaded = load_user_model(r.model.name, r.model.weights, r.model.allow_pickle, self.input_shape)
        dataset = load_dataset(r.data.path)
        if dataset.test.images.shape[1:3] != self.input_shape[1:]:
            raise CompressorError(
                f"images are {dataset.test.images.shape[1:3]} but model.input_shape is {self.input_shape}; "
                "set model.input_shape to match the data"
            )
        self.splits = make_splits(dataset, r.seed, r.data.validation, r.data.calibration, r.data.reference_per_class)
        stages_dir = self.out_dir / "stages"
        stages_dir.mkdir(parents=True, exist_ok=True)

        teacher = loaded.model
        ctx = Context(self.splits, teacher, self.preprocess, self.input_shape, self.out_dir, r.seed, self.progress,
                      self.executor)
        teacher_logits = ctx.teacher_logits("test")
        report = Report(recipe=to_dict(r), seed=r.seed, versions=versions())

        def export_stage(model: nn.Module, name: str, logits: np.ndarray) -> Path:
            """Export a stage's ONNX and check it against the stage's own PyTorch test logits."""
            path = stages_dir / f"{name}.onnx"
            export_onnx(model, path, self.input_shape)
            check_parity(path, model, self.splits.test, self.preprocess, reference=logits)
            return path

        rec = StageRecord("teacher", "teacher")
        t0 = time.perf_counter()
        self._measure(rec, teacher, export_stage(teacher, "00_teacher", teacher_logits), teacher_logits, teacher_logits, None)
        rec.delta_top1, rec.seconds = 0.0, time.perf_counter() - t0
        report.stages.append(rec)
        teacher_top1 = rec.top1

        model: nn.Module = teacher
        bar = tqdm(r.passes, desc="passes", disable=not self.progress)
        for i, spec in enumerate(bar, start=1):
            name = f"{i:02d}_{spec.name}"
            bar.set_postfix_str(spec.name)
            stage_file = stages_dir / f"{name}.pt"
            fp = stage_fingerprint(r, i)
            reused = None
            if self.resume and stage_file.exists():
                try:
                    saved, meta = load_model(stage_file, loaded.allowed_modules)
                    if meta.get("fingerprint") == fp:
                        reused = (saved, meta)
                except CompressorError:
                    reused = None  # damaged: run the stage again
            if reused is not None:
                model, meta = reused
                rec = StageRecord(**meta["record"])
                rec.details["resumed"] = True
                report.stages.append(rec)
                continue
            t0 = time.perf_counter()
            result = PASSES[spec.name](spec.config).run(copy.deepcopy(model), ctx)
            model = result.model
            rec = StageRecord(name, "pass", details=dict(result.metrics))
            rec.plots = {k: os.path.relpath(v, self.out_dir) for k, v in result.plots.items()}  # linked from report.md
            rec.details["config"] = asdict(spec.config)
            seconds = time.perf_counter() - t0
            if result.artifact is not None:
                rec.artifact = {**result.artifact.as_dict(), "path": os.path.relpath(result.artifact.path, self.out_dir)}
                path = result.artifact.path
                logits = ort_predict(ort_session(path), self.splits.test, self.preprocess)
            else:
                logits = predict(model, self.splits.test, self.preprocess)
                path = export_stage(model, name, logits)
            self._measure(rec, model, path, logits, teacher_logits, teacher_top1)
            rec.seconds = seconds
            save_model(model, stage_file, {"fingerprint": fp, "record": asdict(rec)})
            report.stages.append(rec)

        # Exports of the final model.
        final_onnx = self.out_dir / "model.onnx"
        t0 = time.perf_counter()
        export_onnx(model, final_onnx, self.input_shape)
        parity = check_parity(final_onnx, model, self.splits.test, self.preprocess)
        deployed = final_onnx
        exp = StageRecord("export_onnx", "export", details={"parity": parity.as_dict()})
        self._measure(exp, model, final_onnx, parity.ort_logits, teacher_logits, teacher_top1)
        exp.seconds = time.perf_counter() - t0
        report.stages.append(exp)
        deployed_precision = "fp32"
        if "onnx_int8" in r.export:
            # The recipe parser refuses network-changing passes after the artifact's pass, so the last stage with
            # an artifact is of the final model.
            q = next(s for s in reversed(report.stages) if s.artifact is not None)
            int8_path = self.out_dir / "model_int8.onnx"
            copy_atomic(self.out_dir / q.artifact["path"], int8_path)
            row = StageRecord("export_onnx_int8", "export", q.top1, q.delta_top1, q.agreement, q.params, q.macs,
                              str(int8_path.name), q.onnx_size_mb, q.latency_b1_p50_ms, q.throughput_b64_img_s)
            report.stages.append(row)
            if q.artifact["deploy"]:
                deployed, deployed_precision = int8_path, q.artifact["precision"]
        if "tensorrt" in r.export:
            from compressor.runtime.tensorrt import build_engine

            precision = "int8" if deployed_precision == "int8" else "fp16"
            engine = build_engine(deployed, self.out_dir / "model.engine", precision=precision)
            report.stages.append(StageRecord("export_tensorrt", "export", details={"engine": engine.name, "precision": precision}))
        report.deployed = deployed.name
        report.gate = evaluate_gate(report, r.budget)
        report.wall_seconds = time.perf_counter() - t_start
        write_report(report, self.out_dir)
        if not report.gate_passed:
            failed = [g for g in report.gate if not g.passed]
            raise GateFailed("; ".join(
                f"{g.limit}: required {g.required:g}, got {'n/a' if g.actual is None else f'{g.actual:.3f}'}" for g in failed
            ) + f" (artifacts and report written to {self.out_dir})")
        return report
