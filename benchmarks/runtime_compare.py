"""ONNX Runtime against OpenVINO on the CIFAR teachers: img/s at batch 64, p50 at batch 1 and test top-1.

Per model, in one side-by-side run (each artifact alone in a fresh process, all of them alternating window by
window: ``compressor.runtime.bench.measure_onnx_isolated``, the children the quantize pass and ``compressor bench``
use):

- ORT FP32 (the BN-folded teacher), ORT INT8 (our ort-cpu emission), ORT ``quantize_static`` defaults;
- OpenVINO FP32 under each ``--ov-precisions`` hint (f32 and default: bf16 on CPUs with native bfloat16);
- OpenVINO INT8 of both our emissions, the ort-cpu QDQ and the openvino-cpu QDQ, under each hint.

Every INT8 artifact uses one configuration (``--config``, the quantize pass's default point unless given), calibrated
on ``--calibration`` training images. Top-1 is measured on the test split (all 10,000 images unless
``--test-limit``) in the runtime and with the hint each row is timed with. For every OpenVINO INT8 row the number of
convolutions and linear layers its execution graph runs in u8/i8 is printed (``int8 conv+fc``). The goal line
checks ResNet-56: OpenVINO INT8 (openvino-cpu emission) at ≥ 3.5× the teacher's ORT FP32 throughput at batch 64,
≤ 0.3 pt test top-1 loss, every conv and the linear layer INT8.

    python benchmarks/runtime_compare.py --out out/runtime_compare                       # quiet machine
    python benchmarks/runtime_compare.py --models cifar_resnet20 --test-limit 200 --duration 0.2   # smoke test
    python benchmarks/runtime_compare.py --no-timing --out out/runtime_accuracy          # accuracy only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_search import DATA, TEACHERS, load_teacher, ort_default  # noqa: E402

from compressor.core.data import Preprocess, load_dataset, make_splits  # noqa: E402
from compressor.core.files import write_atomic  # noqa: E402
from compressor.graph.fusion import fold_batchnorm  # noqa: E402
from compressor.quant.problem import QuantProblem, top1_onnx  # noqa: E402
from compressor.quant.space import QuantConfig  # noqa: E402
from compressor.runtime import openvino  # noqa: E402
from compressor.runtime.bench import BenchSettings, Timed, measure_onnx_isolated  # noqa: E402
from compressor.runtime.export import export_onnx  # noqa: E402

SHAPE = (3, 32, 32)
GOAL_MODEL, GOAL_SPEEDUP, GOAL_LOSS = "cifar_resnet56", 3.5, 0.3


def parse_config(key: str | None) -> QuantConfig:
    """``calibration,clipping,scheme,granularity[,precision]``, e.g. ``1000,entropy,asymmetric,per_channel``."""
    if not key:
        return QuantConfig()
    parts = key.split(",")
    return QuantConfig(int(parts[0]), *parts[1:])


def build(name: str, splits, config: QuantConfig, work: Path, precisions: list[str]) -> dict[str, Timed]:
    """Every artifact of one model, as the rows of the table (label -> file, runtime, hint)."""
    pp = Preprocess()
    fp32 = export_onnx(fold_batchnorm(load_teacher(name)), work / "fp32.onnx", SHAPE)
    int8 = {}
    for target in ("ort-cpu", "openvino-cpu"):
        problem = QuantProblem(onnx.load(fp32), splits.calibration, splits.validation, pp, target=target)
        int8[target] = work / f"int8_{target}.onnx"
        onnx.save(problem.build(config), int8[target])
    rows = {
        "ORT FP32": Timed(fp32),
        "ORT INT8 (ours)": Timed(int8["ort-cpu"]),
        "ORT quantize_static defaults": Timed(ort_default(fp32, splits.calibration, pp, work / "ort_default.onnx")),
    }
    for hint in precisions:
        rows[f"OpenVINO FP32, {hint}"] = Timed(fp32, "openvino", hint)
    for hint in precisions:
        rows[f"OpenVINO INT8, ort-cpu QDQ, {hint}"] = Timed(int8["ort-cpu"], "openvino", hint)
        rows[f"OpenVINO INT8, openvino-cpu QDQ, {hint}"] = Timed(int8["openvino-cpu"], "openvino", hint)
    return rows


def accuracy(spec: Timed, split) -> float:
    if spec.backend == "openvino":
        return top1_onnx(str(spec.path), split, Preprocess(), target="openvino-cpu", precision=spec.precision)
    return top1_onnx(str(spec.path), split, Preprocess())


def timing(rows: dict[str, Timed], images: np.ndarray, args, work: Path) -> dict[str, dict]:
    """p50 at batch 1 (median of every latency) and img/s at batch 64 (from the median batch latency), with the
    slowest and fastest window, each artifact in its own processes, alternating."""
    npy = work / "inputs.npy"
    np.save(npy, np.ascontiguousarray(images[:64], dtype=np.float32))
    settings = BenchSettings(warmup=0.2, duration=args.duration * args.windows, iterations=3 * args.windows,
                             threads=args.threads)
    measured = measure_onnx_isolated(list(rows.values()), [1, 64], settings, windows=args.windows, inputs=npy,
                                     progress=True)
    out = {}
    for i, label in enumerate(rows):
        per_window = [64e3 / ms for ms in measured[64][i][2]]
        out[label] = {"p50_b1_ms": float(np.median(measured[1][i][0])),
                      "img_s_b64": float(64e3 / np.median(measured[64][i][0])),
                      "img_s_b64_windows": [min(per_window), max(per_window)]}
    return out


def run_model(name: str, dataset, args) -> dict:
    splits = make_splits(dataset, 0, validation=1000, calibration=args.calibration)
    test = splits.test if args.test_limit is None else splits.test.subset(np.arange(args.test_limit))
    config = parse_config(args.config)
    work = Path(tempfile.mkdtemp(prefix=f"runtime-compare-{name}-"))
    rows = build(name, splits, config, work, args.ov_precisions)
    result: dict = {"model": name, "config": config.key(), "test_images": len(test), "rows": {}}
    for label, spec in rows.items():
        row = result["rows"][label] = {"file": Path(spec.path).name, "backend": spec.backend}
        if spec.backend == "openvino":
            row["precision"] = spec.precision
            if "INT8" in label:
                row["int8"] = openvino.int8_summary(str(spec.path), spec.precision)
        if not args.no_accuracy:
            row["top1"] = accuracy(spec, test)
            print(f"{name} {label}: top-1 {row['top1']:.2f}", flush=True)
    if not args.no_timing:
        images = Preprocess()(splits.validation.images[:64]).numpy()
        for label, figures in timing(rows, images, args, work).items():
            result["rows"][label].update(figures)
    return result


def table(result: dict) -> str:
    base = result["rows"]["ORT FP32"]
    lines = [f"### {result['model']} (INT8 config {result['config']}, {result['test_images']} test images)", "",
             "| artifact | test top-1 % | Δ pt vs ORT FP32 | p50 b1 ms | img/s b64 | × ORT FP32 img/s | int8 conv+fc |",
             "|---|---|---|---|---|---|---|"]
    for label, r in result["rows"].items():
        top1, img = r.get("top1"), r.get("img_s_b64")
        delta = None if top1 is None or base.get("top1") is None else top1 - base["top1"]
        ratio = None if img is None else img / base["img_s_b64"]
        int8 = f"{r['int8']['int8_layers']}/{r['int8']['compute_layers']}" if "int8" in r else ""
        cells = [label, f"{top1:.2f}" if top1 is not None else "", f"{delta:+.2f}" if delta is not None else "",
                 f"{r['p50_b1_ms']:.3f}" if "p50_b1_ms" in r else "", f"{img:,.0f}" if img is not None else "",
                 f"{ratio:.2f}×" if ratio is not None else "", int8]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal(result: dict) -> str:
    """The issue's goal on ResNet-56, judged on the openvino-cpu emission under each hint."""
    base = result["rows"]["ORT FP32"]
    lines = []
    for label, r in result["rows"].items():
        if "openvino-cpu QDQ" not in label:
            continue
        speedup = r["img_s_b64"] / base["img_s_b64"] if "img_s_b64" in r else None
        loss = base["top1"] - r["top1"] if "top1" in r and "top1" in base else None
        all_int8 = r["int8"]["int8_layers"] == r["int8"]["compute_layers"]
        ok = speedup is not None and speedup >= GOAL_SPEEDUP and loss is not None and loss <= GOAL_LOSS and all_int8
        lines.append(f"goal {label}: throughput {'n/a' if speedup is None else f'{speedup:.2f}'}× ORT FP32 "
                     f"(≥ {GOAL_SPEEDUP}), loss {'n/a' if loss is None else f'{loss:.2f}'} pt (≤ {GOAL_LOSS}), "
                     f"all INT8 {all_int8}: {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    p.add_argument("--data", default=str(DATA / "cifar10" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--config", help="INT8 configuration calibration,clipping,scheme,granularity[,precision]")
    p.add_argument("--calibration", type=int, default=1000, help="calibration images from the training split")
    p.add_argument("--ov-precisions", type=lambda s: s.split(","), default=["f32", "default"])
    p.add_argument("--test-limit", type=int, help="first N test images only (smoke tests)")
    p.add_argument("--duration", type=float, default=1.0, help="seconds per artifact, window and batch size")
    p.add_argument("--windows", type=int, default=5, help="alternating windows (each a fresh process per artifact)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-timing", action="store_true", help="accuracy and INT8 layers only")
    p.add_argument("--no-accuracy", action="store_true", help="timing and INT8 layers only")
    p.add_argument("--out", help="folder for results.json and results.md")
    args = p.parse_args()
    dataset = load_dataset(args.data)
    results, text = [], []
    for name in args.models:
        results.append(run_model(name, dataset, args))
        text.append(table(results[-1]))
        print("\n" + text[-1], flush=True)
        if name == GOAL_MODEL and not (args.no_timing or args.no_accuracy):
            text.append(goal(results[-1]))
            print(text[-1], flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"threads": args.threads, "duration": args.duration, "windows": args.windows, "versions": versions()}
        write_atomic(out / "results.json", json.dumps({"settings": meta, "models": results}, indent=2))
        write_atomic(out / "results.md", "\n\n".join(text) + "\n")


def versions() -> dict:
    from compressor.pipeline.report import versions as report_versions

    return report_versions()


if __name__ == "__main__":
    main()
