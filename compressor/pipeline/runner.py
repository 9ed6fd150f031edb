"""The pipeline: load → passes → export → bench → report, driven by a recipe.

Every stage's model is saved under ``stages/`` and recorded, with the hashes of everything it was computed from,
in the run manifest (:mod:`compressor.pipeline.manifest`), so ``resume`` reuses exactly the stages whose inputs
are unchanged and whose files verify. All inputs are checked before the output folder is touched.

Determinism: each stage starts from global RNG states derived from the recipe seed and the stage's index, so a
stage computes the same whether the stages before it ran in this process or were reused from disk.
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from compressor.core.data import Preprocess, check_against_model, load_dataset, make_splits
from compressor.core.executors import SerialExecutor, make_executor
from compressor.core.files import copy_atomic, path_problem
from compressor.core.metrics import agreement, count_macs, count_params, predict, top1
from compressor.core.models import LoadedModel, load_user_model
from compressor.core.serialize import load_model, model_digest, save_model
from compressor.errors import CompressorError, GateFailed
from compressor.passes import PASSES, Context
from compressor.pipeline.gate import evaluate_gate
from compressor.pipeline.manifest import NAME as MANIFEST
from compressor.pipeline.manifest import (
    Manifest,
    StageEntry,
    claim,
    code_version,
    data_digest,
    list_files,
    module_source_digest,
    owned_name,
    remove,
    sha256_file,
    sha256_json,
    snapshot,
    temporary,
    written_since,
)
from compressor.pipeline.recipe import Recipe, to_dict
from compressor.pipeline.report import Report, StageRecord, headline, versions, write_report
from compressor.runtime import openvino
from compressor.runtime.bench import TARGET_BACKENDS, BenchSettings, Timed, bench_targets
from compressor.runtime.export import check_parity, export_onnx, export_openvino, ort_predict, ort_session
from compressor.runtime.latency import Latency, measure_isolated, paired_speedup


def prepare_out_dir(out_dir: Path) -> None:
    """Refuse a file, an impossible path or an unwritable location before any work is done."""
    if problem := path_problem(out_dir):
        raise CompressorError(f"output path {str(out_dir)[:60]!r} {problem}; give another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise CompressorError(f"output path {out_dir} is a file; give a folder path with --out")
    probe_parent = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not os.access(probe_parent, os.W_OK):
        raise CompressorError(f"output folder {out_dir} is not writable; choose another --out")


def recipe_prefix(recipe: Recipe, upto: int) -> dict:
    """What of the recipe a stage depends on: model and data settings, the seed and the passes up to it. File
    paths are left out: the files' contents are hashed instead, so moving the data does not invalidate a stage."""
    d = to_dict(recipe)
    model = {k: v for k, v in d["model"].items() if k != "weights"}
    data = {k: v for k, v in d["data"].items() if k != "path"}
    # Tasks' intra-op threads change float sums (students' weights); the executor kind and worker count do not.
    key = {"model": model, "data": data, "seed": d["seed"], "passes": d["passes"][:upto],
           "task_threads": d["executor"]["threads"]}
    if any(getattr(p.config, "target", None) == "openvino-cpu" for p in recipe.passes[:upto]):
        key["openvino"] = d["openvino"]  # the hint its candidates were scored and timed with
    return key


def stage_seed(seed: int, index: int) -> int:
    return int(hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:8], 16)


def seed_everything(seed: int) -> None:
    """Reset the global RNGs a pass might draw from without its own generator (torch, NumPy, random)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def log_stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


class Pipeline:
    """Runs one recipe into one output folder."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, resume: bool = False, progress: bool = True,
                 force: bool = False, log: Callable[[str], None] = log_stderr):
        """``resume``: reuse the verified stages of an earlier run in ``out_dir``. ``force``: delete compressor's
        files in a non-empty ``out_dir`` first (others are kept). ``log``: where the lines saying which stages
        are reused or re-run and why go (stderr by default, even without progress bars)."""
        self.recipe, self.out_dir, self.resume, self.progress = recipe, Path(out_dir), resume, progress
        self.force, self.log = force, log
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
        if "openvino" in r.export or "openvino-cpu" in r.targets or any(
                getattr(p.config, "target", None) == "openvino-cpu" for p in r.passes):
            openvino.import_openvino()  # likewise for OpenVINO
        if r.executor.kind == "ray":
            from compressor.core.ray_executor import _import_ray

            _import_ray()  # likewise Ray
        if r.budget.min_speedup is not None and not r.bench.enabled:
            raise CompressorError("budget.min_speedup (--min-speedup) needs latency measurements: set bench.enabled: "
                                  "true or drop --no-bench")

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
        own = logits if (record.artifact or {}).get("target") == "openvino-cpu" else None
        self._runtime_figures(record, onnx_path, own)

    def _runtime_figures(self, record: StageRecord, path: Path, openvino_logits: np.ndarray | None = None) -> None:
        """What depends on the recipe's targets, hint and bench settings: OpenVINO's test top-1 (the hint may change
        numerics: measured, never assumed) and the timings; recorded with those settings."""
        if "openvino-cpu" in self.recipe.targets:
            ov = openvino_logits if openvino_logits is not None else self._predict(path, "openvino-cpu")
            record.runtime_top1["openvino-cpu"] = top1(ov, self.splits.test.labels)
        if self.recipe.bench.enabled:
            self._time(record, path, self.recipe.targets)
        record.details["measured_with"] = self._measured_with()

    def _measured_with(self) -> dict:
        """The settings a stage's runtime accuracy and timings depend on but its stage key does not."""
        d = to_dict(self.recipe)
        bench = {k: v for k, v in d["bench"].items() if k != "rounds"}  # the headline's paired rounds, not a row's
        return {"targets": d["targets"], "openvino": d["openvino"], "bench": bench}

    def _remeasure(self, record: StageRecord) -> None:
        """A reused stage's OpenVINO accuracy and timings again, under this run's targets, hint and bench settings."""
        record.runtime_top1.pop("openvino-cpu", None)
        record.latency, record.latency_b1_p50_ms, record.throughput_b64_img_s = {}, None, None
        record.details.pop("bench", None)
        self._runtime_figures(record, self.out_dir / record.onnx_path)

    def _time(self, record: StageRecord, path: Path, targets: list[str]) -> None:
        """Per target: p50 at batch 1 and img/s at batch 64; the recipe's first target fills the gated columns."""
        self.executor.release()  # no worker beside a timing
        by_target = bench_targets(path, targets, self.recipe.bench.batches, self.bench, self.recipe.openvino.precision)
        record.details["bench"] = by_target
        for t, stats in by_target.items():
            record.latency[t] = {"p50_b1_ms": stats[1]["latency_ms"]["median"] if 1 in stats else None,
                                 "img_s_b64": stats[64]["throughput_img_s"] if 64 in stats else None}
            if t == "openvino-cpu":
                record.latency[t]["precision"] = self.recipe.openvino.precision
        first = record.latency.get(self.recipe.targets[0])
        if first is not None:
            record.latency_b1_p50_ms, record.throughput_b64_img_s = first["p50_b1_ms"], first["img_s_b64"]

    def _time_paired(self, models: dict[str, tuple[str, str]]) -> dict[str, Latency]:
        """ONNX files (relative to the output folder) on targets, name -> (path, target), alternating round by
        round, each in a fresh process: ``bench.rounds`` rounds of ``bench.duration`` seconds per file, round and
        batch size (1 and 64), on test images. The stage rows are timed minutes apart, and a shared host that
        changes speed in between moves their ratios (docs/latency.md#the-reports-headline); paired rounds cancel that."""
        r = self.recipe
        self.executor.release()  # no worker beside a timing
        timed = {k: Timed(self.out_dir / path, TARGET_BACKENDS[t], r.openvino.precision) for k, (path, t) in models.items()}
        images = self.preprocess(self.splits.test.images[:64]).numpy()
        images = np.resize(images, (64, *images.shape[1:]))  # a test split under 64 images repeats
        return measure_isolated(timed, images, 64, r.bench.threads, rounds=r.bench.rounds, seconds=r.bench.duration,
                                progress=self.progress, warmup=r.bench.warmup)

    def _time_headline(self, report: Report, target: str) -> dict[str, dict | None]:
        """The teacher and the deployed artifact on ``target``, and the teacher in ONNX Runtime FP32 (the common
        baseline) when the target is another runtime, in the same paired rounds."""
        teacher = report.stages[0].onnx_path
        models = {"teacher": (teacher, target), "deployed": (report.deployed, target)}
        if target != "ort-cpu":
            models["teacher_ort_fp32"] = (teacher, "ort-cpu")
        lat = self._time_paired(models)
        return {"vs_teacher": paired_speedup(lat["teacher"], lat["deployed"]),
                "vs_teacher_ort_fp32": paired_speedup(lat.get("teacher_ort_fp32", lat["teacher"]), lat["deployed"])}

    def _time_stage_pair(self, before: StageRecord, stage: StageRecord, target: str) -> dict | None:
        """A pass stage against its input on ``target`` in paired rounds: what a slower-stage flag rests on."""
        lat = self._time_paired({"before": (before.onnx_path, target), "stage": (stage.onnx_path, target)})
        return paired_speedup(lat["before"], lat["stage"])

    def _predict(self, path: Path, target: str) -> np.ndarray:
        """Test-split logits of an ONNX file on ``target``: OpenVINO with the recipe's hint, or ONNX Runtime."""
        if target == "openvino-cpu":
            return openvino.predict(path, self.splits.test.images, self.recipe.openvino.precision, preprocess=self.preprocess)
        return ort_predict(ort_session(path), self.splits.test, self.preprocess)

    def _export_openvino(self, model: nn.Module, deployed: Path, precision: str, teacher_logits: np.ndarray,
                         teacher_top1: float) -> StageRecord:
        """model.xml/.bin of the deployed model, parity-checked on every test image, its accuracy measured under the
        recipe's precision hint, which layers run in INT8, and its speed on openvino-cpu."""
        t0, hint = time.perf_counter(), self.recipe.openvino.precision
        xml, parity, logits = export_openvino(deployed, self.out_dir / "model.xml", model, self.splits.test,
                                              self.preprocess, precision == "int8", hint)
        rec = StageRecord("export_openvino", "export", top1(logits, self.splits.test.labels), params=count_params(model),
                          macs=count_macs(model, self.input_shape), onnx_path=xml.name,
                          onnx_size_mb=(xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20,
                          details={"parity": parity.as_dict(), "precision_hint": hint, "deployed": deployed.name})
        if precision == "int8":  # from OpenVINO's execution graph: which convolutions and linear layers run in u8/i8
            rec.details["openvino_int8"] = openvino.int8_summary(xml, hint)
        rec.delta_top1, rec.agreement = rec.top1 - teacher_top1, agreement(logits, teacher_logits)
        rec.runtime_top1["openvino-cpu"] = rec.top1
        if self.recipe.bench.enabled:
            self._time(rec, xml, ["openvino-cpu"])
        rec.seconds = time.perf_counter() - t0
        return rec

    def _input_hashes(self, allowed_modules: tuple[str, ...]) -> tuple[dict, dict]:
        """(manifest inputs, the hashes every stage key includes): code, weights, model source, data."""
        r = self.recipe
        code = code_version()
        weights = sha256_file(r.model.weights) if r.model.weights else "none"
        source = module_source_digest(allowed_modules[-1])
        data = data_digest(r.data.path)
        inputs = {"weights": {"path": r.model.weights, "sha256": weights},
                  "model": {"name": r.model.name, "source_sha256": source},
                  "data": {"path": r.data.path, "sha256": data}, "recipe": to_dict(r)}
        key = {"code": sha256_json({k: v for k, v in code.items() if k != "git_commit"}), "weights": weights,
               "model": sha256_json([r.model.name, source]), "data": data}
        return {"code": code, "inputs": inputs}, key

    def _reuse(self, prev: Manifest, name: str, inputs: dict, loaded: LoadedModel):  # noqa: ANN202
        """The earlier run's (model, record, entry) of this stage when it may stand in for running it, else None
        after logging why it is re-run."""
        i = int(name[:2])
        old = prev.stages[i - 1] if i <= len(prev.stages) else None
        if old is None:
            interrupted = prev.running is not None and prev.running.name == name
            reason = "the earlier run stopped during it" if interrupted else "the earlier run did not reach it"
        else:
            reason = old.why_not_reusable(name, inputs, self.out_dir)
        if reason is None:
            try:
                model, meta = load_model(self.out_dir / "stages" / f"{name}.pt", loaded.allowed_modules, loaded.factory)
                if model_digest(model) == old.output:
                    self.log(f"resume: reusing {name} (inputs unchanged, files verified)")
                    return model, StageRecord(**meta["record"]), old
                reason = f"stages/{name}.pt holds another model than the manifest records"
            except (CompressorError, KeyError, TypeError):
                reason = f"stages/{name}.pt cannot be read"
        self.log(f"resume: re-running {name}: {reason}")
        if old is not None:
            remove(self.out_dir, old.files)
        return None

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
        dataset = load_dataset(r.data.path, progress=self.progress)
        check_against_model(dataset, loaded.outputs, self.input_shape)
        self.splits = make_splits(dataset, r.seed, r.data.validation, r.data.calibration, r.data.reference_per_class)
        header, key = self._input_hashes(loaded.allowed_modules)

        # The output folder: refuse to mix runs; on resume, drop what no stage to be verified accounts for.
        prev, foreign = claim(self.out_dir, self.resume, self.force, self.log)
        stages_dir = self.out_dir / "stages"
        stages_dir.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(**header)
        stale: set[str] = set()
        if prev is not None:
            kept = {f for s in prev.stages for f in s.files}
            stale = {f for f in list_files(self.out_dir) if f not in foreign and f not in kept and owned_name(f)}
            stale.discard(MANIFEST)
            # Unless a stage was interrupted, whose saved state they may be (decided when that stage comes).
            remove(self.out_dir, stale if prev.running is None else {f for f in stale if temporary(f)})
            # Until each is verified, the earlier stages stay listed: a run killed now leaves them reusable.
            manifest.stages, manifest.running = list(prev.stages), prev.running
            if foreign:
                self.log(f"resume: keeping {len(foreign)} file(s) in {self.out_dir} that compressor did not write")
        elif self.resume:
            self.log(f"resume: {self.out_dir} holds no earlier run; running every stage")
        manifest.save(self.out_dir)

        teacher = loaded.model
        ctx = Context(self.splits, teacher, self.preprocess, self.input_shape, self.out_dir, r.seed, self.progress,
                      openvino_precision=r.openvino.precision, executor=self.executor)
        teacher_logits = ctx.teacher_logits("test")
        report = Report(recipe=to_dict(r), seed=r.seed, versions=versions())

        def export_stage(model: nn.Module, name: str, logits: np.ndarray) -> Path:
            """Export a stage's ONNX and check it against the stage's own PyTorch test logits."""
            path = stages_dir / f"{name}.onnx"
            export_onnx(model, path, self.input_shape)
            check_parity(path, model, self.splits.test, self.preprocess, reference=logits)
            return path

        seed_everything(stage_seed(r.seed, 0))
        rec = StageRecord("teacher", "teacher")
        t0 = time.perf_counter()
        self._measure(rec, teacher, export_stage(teacher, "00_teacher", teacher_logits), teacher_logits, teacher_logits, None)
        rec.delta_top1, rec.seconds = 0.0, time.perf_counter() - t0
        report.stages.append(rec)
        manifest.add(self.out_dir, ["stages/00_teacher.onnx"])
        teacher_top1 = rec.top1

        model: nn.Module = teacher
        digest = model_digest(teacher)
        bar = tqdm(r.passes, desc="passes", disable=not self.progress)
        for i, spec in enumerate(bar, start=1):
            name = f"{i:02d}_{spec.name}"
            bar.set_postfix_str(spec.name)
            stage_file = stages_dir / f"{name}.pt"
            inputs = {**key, "recipe": sha256_json(recipe_prefix(r, i)), "input": digest}
            done = manifest.stages[: i - 1]
            reused = self._reuse(prev, name, inputs, loaded) if prev is not None else None
            if reused is not None:
                model, rec, entry = reused
                rec.details["resumed"] = True
                if rec.details.get("measured_with") != self._measured_with():
                    self.log(f"resume: re-measuring {name}'s runtime accuracy and speed (targets, openvino or bench "
                             "settings changed)")
                    self._remeasure(rec)
                report.stages.append(rec)
                manifest.stages = done + [entry] + (prev.stages[i:] if prev is not None else [])
                manifest.save(self.out_dir)
                digest = entry.output
                continue
            if prev is not None and prev.running is not None and prev.running.name == name:
                partial = sorted(f for f in stale - set(manifest.files) if (self.out_dir / f).exists())
                if prev.running.inputs != inputs:
                    remove(self.out_dir, partial)
                elif partial:  # e.g. the N2N search's checkpoint, which the pass continues from
                    self.log(f"resume: {name} may continue from the files it saved before it stopped: {', '.join(partial)}")
            seed_everything(stage_seed(r.seed, i))
            later = prev.stages[i:] if prev is not None else []
            manifest.stages, manifest.running = done + later, StageEntry(name, inputs)
            manifest.save(self.out_dir)
            before = snapshot(self.out_dir)
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
                logits = self._predict(path, result.artifact.target)
            else:
                logits = predict(model, self.splits.test, self.preprocess)
                path = export_stage(model, name, logits)
            self._measure(rec, model, path, logits, teacher_logits, teacher_top1)
            rec.seconds = seconds
            save_model(model, stage_file, {"record": asdict(rec)}, loaded.factory)
            report.stages.append(rec)
            digest = model_digest(model)
            written = written_since(before, self.out_dir)
            entry = StageEntry(name, inputs, digest, {f: sha256_file(self.out_dir / f) for f in written})
            manifest.stages, manifest.running = done + [entry] + later, None
            manifest.save(self.out_dir)

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
        finals = ["model.onnx"]
        deployed_precision = "fp32"
        if "onnx_int8" in r.export:
            # The recipe parser refuses network-changing passes after the artifact's pass, so the last stage with
            # an artifact is of the final model.
            q = next(s for s in reversed(report.stages) if s.artifact is not None)
            int8_path = self.out_dir / "model_int8.onnx"
            copy_atomic(self.out_dir / q.artifact["path"], int8_path)
            finals.append(int8_path.name)
            row = StageRecord("export_onnx_int8", "export", q.top1, q.delta_top1, q.agreement, q.params, q.macs,
                              str(int8_path.name), q.onnx_size_mb, q.latency_b1_p50_ms, q.throughput_b64_img_s,
                              latency=q.latency, runtime_top1=q.runtime_top1)
            report.stages.append(row)
            if q.artifact["deploy"]:
                deployed, deployed_precision = int8_path, q.artifact["precision"]
        if "openvino" in r.export:
            report.stages.append(self._export_openvino(model, deployed, deployed_precision, teacher_logits, teacher_top1))
            finals += ["model.xml", "model.bin"]
        if "tensorrt" in r.export:
            from compressor.runtime.tensorrt import build_engine

            precision = "int8" if deployed_precision == "int8" else "fp16"
            engine = build_engine(deployed, self.out_dir / "model.engine", precision=precision)
            finals.append(engine.name)
            report.stages.append(StageRecord("export_tensorrt", "export", details={"engine": engine.name, "precision": precision}))
        report.deployed = deployed.name
        # The headline is on the target the recipe's quantize pass chose for (also when its fallback deployed FP32
        # there) when the recipe times it, else on its first target.
        made_for = next((s.artifact["target"] for s in reversed(report.stages) if s.artifact), None)
        target = made_for if made_for in r.targets else r.targets[0]
        if r.bench.enabled:
            report.headline = headline(report, target, self._time_headline(report, target),
                                       lambda a, b: self._time_stage_pair(a, b, target))
        else:
            report.headline = headline(report, target)
        report.gate = evaluate_gate(report, r.budget)
        report.wall_seconds = time.perf_counter() - t_start
        write_report(report, self.out_dir)
        manifest.add(self.out_dir, finals + ["report.json", "report.md", "accuracy_latency.png"])
        # Whatever of the earlier run this one neither reused nor rewrote (stages the recipe no longer has, an
        # interrupted stage's state) goes, so the folder holds one run.
        manifest.stages = manifest.stages[: len(r.passes)]
        manifest.save(self.out_dir)
        leftovers = stale | ({f for s in prev.stages for f in s.files} if prev is not None else set())
        remove(self.out_dir, sorted(leftovers - set(manifest.files)))
        manifest.complete = True
        manifest.save(self.out_dir)
        if not report.gate_passed:
            failed = [g for g in report.gate if not g.passed]
            raise GateFailed("; ".join(
                f"{g.limit}: required {g.required:g}, got {'n/a' if g.actual is None else f'{g.actual:.3f}'}"
                + (f" ({g.measured})" if g.measured else "") for g in failed
            ) + f" (artifacts and report written to {self.out_dir})")
        return report
