"""Which emission choices and Quantune knobs change OpenVINO's INT8 speed: the timing behind the openvino-cpu target.

For each model, INT8 QDQ variants are timed on OpenVINO side by side (each alone in a fresh process, all of them
alternating window by window, as ``compressor bench``), at batch 64 and batch 1, against the openvino-cpu emission
of the default configuration:

- emission: the openvino-cpu QDQ (ort-cpu placement, option-A shortcuts as exact 1×1 strided convs, stem left at
  3 channels); without the shortcut rewrite (strided Slices + channel Pad); with the stem padded to 4 input
  channels as for MLAS (= the ort-cpu QDQ); and Q/DQ placed only on the inputs of Conv/Gemm/MatMul/Add and
  pooling (the placement NNCF uses) instead of on every op's output;
- scheme: asymmetric, symmetric (int8 activations), symmetric_uint8, power_of_two;
- granularity: per-channel against per-tensor weights;
- mixed precision: the most sensitive layers kept in float;
- and, for reference, the FP32 model on OpenVINO (f32 hint) and on ONNX Runtime.

Every variant's execution graph is checked: the count of convolutions and linear layers OpenVINO runs in u8/i8,
and the count of nodes it executes (a residual Add OpenVINO fuses into its convolution is not a node of its own).
``--graph-only`` prints those two columns without timing.

``--accuracy`` measures instead (no timing) the validation top-1 in OpenVINO of the openvino-cpu emission over
clipping × scheme × granularity at 1,000 calibration images, with each scheme's INT8 layer count: the grid
behind the openvino-cpu space (docs/lab-notes/openvino.md).

    python benchmarks/openvino_knobs.py --models cifar_resnet56 cifar_mobilenetv2     # timing, quiet machine
    python benchmarks/openvino_knobs.py --models cifar_resnet20 --duration 0.2 --windows 2   # smoke test
    python benchmarks/openvino_knobs.py --graph-only --models cifar_resnet20 cifar_resnet56 cifar_mobilenetv2
    python benchmarks/openvino_knobs.py --accuracy --models cifar_resnet20 cifar_resnet56 cifar_mobilenetv2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_search import DATA, TEACHERS, load_teacher  # noqa: E402

from compressor.core.data import Preprocess, load_dataset, make_splits  # noqa: E402
from compressor.graph.fusion import fold_batchnorm  # noqa: E402
from compressor.quant import qdq  # noqa: E402
from compressor.quant.problem import QuantProblem, top1_onnx  # noqa: E402
from compressor.quant.space import CLIPPINGS, QuantConfig  # noqa: E402
from compressor.runtime import openvino  # noqa: E402
from compressor.runtime.bench import BenchSettings, Timed, measure_onnx_isolated  # noqa: E402
from compressor.runtime.export import export_onnx  # noqa: E402

BASE = QuantConfig(1000, "entropy", "asymmetric", "per_channel", "int8")


def padded_stem(model: onnx.ModelProto) -> onnx.ModelProto:
    """The openvino-cpu emission with the stem padded to 4 input channels: the ort-cpu emission."""
    model = copy.deepcopy(model)
    qdq.pad_input_channels(model)
    return model


@contextlib.contextmanager
def patched(**replacements):
    """Build under replaced ``compressor.quant.qdq`` globals (a rewrite turned off, another Q/DQ placement)."""
    saved = {k: getattr(qdq, k) for k in replacements}
    for k, v in replacements.items():
        setattr(qdq, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(qdq, k, v)


def exec_nodes(path: Path, hint: str) -> int:
    """Nodes OpenVINO's execution graph runs (constants, inputs, outputs and reshapes of constants excluded)."""
    compiled = openvino.compile_model(path, 1, hint, 1)
    kinds = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()]
    return sum(k not in ("Const", "Input", "Output", "Reshape") for k in kinds)


def variants(name: str, splits, work: Path, hint: str) -> dict[str, Timed]:
    fp32 = export_onnx(fold_batchnorm(load_teacher(name)), work / "fp32.onnx", (3, 32, 32))
    problem = QuantProblem(onnx.load(fp32), splits.calibration, splits.validation, Preprocess(), target="openvino-cpu")
    base = problem.build(BASE)
    models = {
        "openvino-cpu QDQ (asymmetric, per-channel)": base,
        "shortcut kept as Slices + Pad": None,
        "+ stem padded to 4 channels (= ort-cpu QDQ)": padded_stem(base),
        "Q/DQ on Conv/Gemm/Add/pool inputs only": None,
        "scheme symmetric (int8 activations)": problem.build(dataclasses.replace(BASE, scheme="symmetric")),
        "scheme symmetric_uint8": problem.build(dataclasses.replace(BASE, scheme="symmetric_uint8")),
        "scheme power_of_two": problem.build(dataclasses.replace(BASE, scheme="power_of_two")),
        "per-tensor weights": problem.build(dataclasses.replace(BASE, granularity="per_tensor")),
        "mixed precision": problem.build(dataclasses.replace(BASE, precision="mixed")),
    }
    with patched(quantized_pads=lambda m: 0, shortcut_convs=lambda m: 0):
        models["shortcut kept as Slices + Pad"] = problem.build(BASE)
    inputs_only = dict.fromkeys(["Conv", "Gemm", "MatMul", "Add", "GlobalAveragePool", "AveragePool", "MaxPool"])
    with patched(QDQRegistry=inputs_only, QLinearOpsRegistry={}):
        models["Q/DQ on Conv/Gemm/Add/pool inputs only"] = problem.build(BASE)
    rows = {}
    for i, (label, model) in enumerate(models.items()):
        path = work / f"v{i}.onnx"
        onnx.save(model, path)
        rows[label] = Timed(path, "openvino", hint)
    rows[f"FP32 on OpenVINO ({hint})"] = Timed(fp32, "openvino", hint)
    rows["FP32 on ONNX Runtime"] = Timed(fp32)
    return rows


def accuracy_grid(name: str, splits, hint: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        fp32 = export_onnx(fold_batchnorm(load_teacher(name)), Path(work) / "fp32.onnx", (3, 32, 32))
        problem = QuantProblem(onnx.load(fp32), splits.calibration, splits.validation, Preprocess(),
                               target="openvino-cpu", precision=hint)
    fp32_top1 = top1_onnx(problem.float_model, splits.validation, Preprocess(), target="openvino-cpu", precision=hint)
    print(f"\n### {name}: validation top-1 in OpenVINO ({hint} hint), FP32 {fp32_top1:.2f}\n")
    print("| clipping | scheme | per-channel | per-tensor | int8 conv+fc |\n|---|---|---|---|---|")
    for clipping in CLIPPINGS:
        for scheme in ("asymmetric", "symmetric", "symmetric_uint8", "power_of_two"):
            configs = [QuantConfig(1000, clipping, scheme, g) for g in ("per_channel", "per_tensor")]
            n8 = openvino.int8_summary(problem.build(configs[0]).SerializeToString(), hint)
            # evaluate() bypasses the target's space, so power_of_two is measured although the space leaves it out
            print(f"| {clipping} | {scheme} | " + " | ".join(f"{problem.evaluate(c):.2f}" for c in configs)
                  + f" | {n8['int8_layers']}/{n8['compute_layers']} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cifar_resnet56"], choices=list(TEACHERS))
    p.add_argument("--data", default=str(DATA / "cifar10" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--precision", default="f32", choices=openvino.PRECISIONS, help="OpenVINO precision hint")
    p.add_argument("--duration", type=float, default=1.0, help="seconds per variant, window and batch size")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--accuracy", action="store_true", help="the validation accuracy grid instead of timing")
    p.add_argument("--graph-only", action="store_true", help="INT8 layers and executed nodes only, no timing")
    args = p.parse_args()
    dataset = load_dataset(args.data)
    for name in args.models:
        if args.accuracy:
            accuracy_grid(name, make_splits(dataset, 0, validation=1000, calibration=1000), args.precision)
            continue
        splits = make_splits(dataset, 0, validation=200, calibration=1000)
        work = Path(tempfile.mkdtemp(prefix=f"openvino-knobs-{name}-"))
        rows = variants(name, splits, work, args.precision)
        if args.graph_only:
            print(f"\n### {name}: OpenVINO execution graph, {args.precision} hint\n")
            print("| variant | int8 conv+fc | executed nodes |\n|---|---|---|")
            for label, spec in rows.items():
                if spec.backend == "openvino":
                    n8 = "" if "FP32" in label else "{int8_layers}/{compute_layers}".format(
                        **openvino.int8_summary(str(spec.path), args.precision))
                    print(f"| {label} | {n8} | {exec_nodes(spec.path, args.precision)} |", flush=True)
            continue
        npy = work / "inputs.npy"
        np.save(npy, Preprocess()(splits.validation.images[:64]).numpy())
        settings = BenchSettings(0.2, args.duration * args.windows, 3 * args.windows, args.threads)
        measured = measure_onnx_isolated(list(rows.values()), [1, 64], settings, args.windows, npy, progress=True)
        img = {label: 64e3 / np.median(measured[64][i][0]) for i, label in enumerate(rows)}
        base = img[next(iter(rows))]
        print(f"\n### {name}: OpenVINO {args.precision} hint, {args.threads} threads\n")
        print("| variant | int8 conv+fc | executed nodes | p50 b1 ms | img/s b64 | × openvino-cpu QDQ | "
              "slowest–fastest window img/s |")
        print("|---|---|---|---|---|---|---|")
        for i, (label, spec) in enumerate(rows.items()):
            ov = spec.backend == "openvino"
            n8 = "" if "FP32" in label else "{int8_layers}/{compute_layers}".format(
                **openvino.int8_summary(str(spec.path), args.precision))
            nodes = exec_nodes(spec.path, args.precision) if ov else ""
            windows = [64e3 / ms for ms in measured[64][i][2]]
            print(f"| {label} | {n8} | {nodes} | {np.median(measured[1][i][0]):.3f} | {img[label]:,.0f} | "
                  f"{img[label] / base:.2f} | {min(windows):,.0f}–{max(windows):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
