"""OpenVINO as a second CPU runtime: INT8 confirmed on its execution graph, the openvino-cpu emission and space,
candidates scored in OpenVINO, bench children and --vs across runtimes, IR export with parity, the report's
per-target columns, and the one-line error when OpenVINO is missing."""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys
import types

import numpy as np
import onnx
import pytest

import compressor
from compressor.core.data import Preprocess
from compressor.errors import CompressorError
from compressor.passes.quantize import Quantize
from compressor.pipeline import runner
from compressor.quant import problem as problem_module
from compressor.quant import qdq
from compressor.quant.problem import QuantProblem, top1_onnx
from compressor.quant.space import QuantConfig, config_space
from compressor.runtime import openvino
from compressor.runtime.export import export_onnx, export_openvino
from compressor.runtime.latency import measure_isolated

from .conftest import DEMO_DATA, DEMO_TEACHER, ROOT
from .timing_doubles import PairedClock, quant_latency

pytest.importorskip("openvino")
CONFIG = QuantConfig(1000, "entropy", "asymmetric", "per_channel", "int8")


@pytest.fixture(scope="module")
def small_splits():
    from compressor.core.data import load_dataset, make_splits

    return make_splits(load_dataset(DEMO_DATA), 0, validation=300, calibration=200)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    import torch

    from compressor.core.zoo import ZOO

    model = ZOO["cifar_resnet20"]()
    model.load_state_dict(torch.load(DEMO_TEACHER, weights_only=True))
    return export_onnx(model.eval(), tmp_path_factory.mktemp("ov") / "fp32.onnx", (3, 32, 32))


@pytest.fixture(scope="module")
def ov_problem(fp32_onnx, small_splits):
    return QuantProblem(onnx.load(fp32_onnx), small_splits.calibration, small_splits.validation, Preprocess(),
                        target="openvino-cpu")


def test_every_conv_and_the_linear_layer_run_int8_in_openvino(ov_problem, fp32_onnx, small_splits):
    qdq = ov_problem.build(CONFIG)
    float_convs = sum(n.op_type == "Conv" for n in ov_problem.float_model.graph.node)
    assert float_convs == 19
    int8, other = openvino.int8_layers(openvino.compile_model(qdq.SerializeToString(), 1, "f32", 1))
    # The 19 convs, the two option-A shortcuts as 1x1 convs and the linear layer.
    assert other == [] and collections.Counter(x.type for x in int8) == {"Convolution": 21, "FullyConnected": 1}
    assert all(x.precision in ("u8", "i8") for x in int8)
    # The same helper sees the float model's layers run in float, so it can fail.
    int8, other = openvino.int8_layers(openvino.compile_model(fp32_onnx, 1, "f32", 1))
    assert int8 == [] and len(other) == 20 and {x.precision for x in other} == {"f32"}
    # Mixed precision keeps its most sensitive layers in float, and the execution graph says which.
    mixed = dataclasses.replace(CONFIG, precision="mixed")
    summary = openvino.int8_summary(ov_problem.build(mixed).SerializeToString())
    assert summary["compute_layers"] == 22 and summary["int8_layers"] == 22 - len(ov_problem.float_layers(mixed))
    assert len(summary["not_int8"]) == len(ov_problem.float_layers(mixed)) >= 1
    # Accurate, and scored in OpenVINO: the evaluator's figure is OpenVINO's, not ONNX Runtime's.
    fp32 = top1_onnx(ov_problem.float_model, small_splits.validation, Preprocess(), target="openvino-cpu")
    assert ov_problem.evaluate(CONFIG) >= fp32 - 2.0
    logits = openvino.predict(qdq.SerializeToString(), small_splits.validation.images, preprocess=Preprocess())
    assert ov_problem.results[CONFIG] == pytest.approx((logits.argmax(1) == small_splits.validation.labels).mean() * 100)


def test_openvino_emission_keeps_the_exact_shortcut_rewrite_but_not_the_stem_padding(ov_problem, small_splits,
                                                                                      monkeypatch):
    ov = ov_problem.build(CONFIG)
    ops = collections.Counter(n.op_type for n in ov.graph.node)
    assert ops["Conv"] == 21 and ops["Slice"] == 0 and ops["Pad"] == 0, ops  # shortcuts as 1x1 convs, no stem Pad
    weights = [tuple(i.dims) for i in ov.graph.initializer if i.name.endswith("_quantized") and len(i.dims) == 4]
    assert (16, 3, 3, 3) in weights  # the stem keeps its 3 input channels
    # In OpenVINO the rewrite is exact and removes the shortcut's StridedSlices, Pads and the reorders they force.
    monkeypatch.setattr(qdq, "quantized_pads", lambda model: 0)
    monkeypatch.setattr(qdq, "shortcut_convs", lambda model: 0)
    plain = ov_problem.build(CONFIG)
    x = Preprocess()(small_splits.test.images[:250]).numpy()
    np.testing.assert_array_equal(*(openvino.predict(m.SerializeToString(), x) for m in (ov, plain)))
    kinds = [collections.Counter(op.get_rt_info()["layerType"].astype(str) for op in openvino.compile_model(
        m.SerializeToString(), 1, "f32", 1).get_runtime_model().get_ordered_ops()) for m in (ov, plain)]
    assert kinds[0]["StridedSlice"] == kinds[0]["Pad"] == 0 and kinds[1]["StridedSlice"] == 4 and kinds[1]["Pad"] == 2
    assert kinds[0]["Reorder"] < kinds[1]["Reorder"]



def test_openvino_space_has_every_knob_but_power_of_two():
    space = config_space("openvino-cpu")
    assert space and all(c.scheme != "power_of_two" for c in space)
    assert {c.scheme for c in space} == {"asymmetric", "symmetric", "symmetric_uint8"}
    assert len(space) == len(config_space("ort-cpu")) * 3 // 4


def test_quantize_pass_for_openvino_times_in_openvino(small_splits, teacher, tmp_path, monkeypatch):
    seen = {}

    def fast_int8(models, images, batch, threads, progress, backend="onnxruntime-cpu", precision="f32", **kw):
        seen.update(backend=backend, precision=precision)
        return quant_latency()(models, images, batch, threads)

    monkeypatch.setattr(Quantize, "measure_latency", staticmethod(fast_int8))
    scored = []
    real = problem_module.onnx_logits
    monkeypatch.setattr(problem_module, "onnx_logits", lambda *a, **k: scored.append(k.get("target")) or real(*a, **k))
    from compressor.passes.base import Context

    ctx = Context(small_splits, teacher, Preprocess(), (3, 32, 32), tmp_path, seed=0, openvino_precision="bf16")
    result = Quantize(Quantize.Config(target="openvino-cpu", max_evals=2, warm_start_db="none", adaround=False)).run(
        teacher, ctx)
    d = result.metrics
    assert seen == {"backend": "openvino", "precision": "bf16"}
    assert len(scored) == 4 and set(scored) == {"openvino-cpu"}  # FP32 score and predictions, two candidates
    assert result.artifact.target == "openvino-cpu" and result.artifact.deploy and d["int8_config"]["scheme"] != "power_of_two"
    assert d["openvino_int8"]["compute_layers"] == 22 and len(d["openvino_int8"]["not_int8"]) == len(d["float_layers"])


def test_ir_export_is_atomic_and_checked_on_every_test_image(tmp_path, teacher, demo_splits, fp32_onnx):
    xml, parity, logits = export_openvino(fp32_onnx, tmp_path / "model.xml", teacher, demo_splits.test, Preprocess(),
                                          int8=False, precision="bf16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    assert parity.images == 1500 and parity.top1_agreement == 100.0 and parity.max_abs_logit_diff < 1e-3
    assert openvino.recorded_precision(xml) == "bf16" and logits.shape == (1500, 10)
    assert not np.array_equal(logits, parity.ort_logits)  # the bf16 figures are measured, not the f32 ones reused
    from compressor.core.zoo import ZOO

    other = ZOO["cifar_resnet20"]().eval()  # an untrained network of the same shape must fail the check
    with pytest.raises(CompressorError, match="OpenVINO parity check failed"):
        export_openvino(fp32_onnx, tmp_path / "bad.xml", other, demo_splits.test.subset(np.arange(200)), Preprocess(),
                        int8=False)


def _child(args: list[str]) -> subprocess.CompletedProcess:
    code = ("import runpy, sys; sys.argv = ['bench'] + sys.argv[1:]; runpy.run_module('compressor.runtime.bench', "
            "run_name='__main__'); print(sorted(m for m in ('torch', 'onnxruntime', 'openvino') if m in sys.modules), "
            "file=sys.stderr)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)


def test_bench_child_imports_only_openvino_and_bench_compares_runtimes(fp32_onnx, tmp_path, cli):
    settings = json.dumps({"warmup": 0.01, "duration": 0.05, "iterations": 3, "threads": 1})
    done = _child(["--child", str(fp32_onnx), "--batches", "1,2", "--settings", settings, "--backend", "openvino",
                   "--precision", "f32"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["2"]["latencies_ms"] and done.stderr.strip().endswith("['openvino']")
    out = tmp_path / "b.json"
    code, stdout, err = cli("bench", fp32_onnx, "--backend", "openvino", "--precision", "bf16", "--vs", fp32_onnx,
                            "--vs-backend", "onnxruntime-cpu", "--batch", "2", "--duration", "0.1", "--warmup", "0.02",
                            "--json", out)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["backend"] == "openvino" and data["precision"] == "bf16" and data["vs_backend"] == "onnxruntime-cpu"
    entry = data["results"][0]
    assert {f"{fp32_onnx} [openvino, bf16]", f"{fp32_onnx} [onnxruntime-cpu]"} <= set(entry) and "Ratio" in stdout
    assert entry["ratio"]["throughput"] > 0
    code, _, err = cli("bench", fp32_onnx, "--precision", "bf16")
    assert code == 2 and "--precision applies to the openvino backend" in err


def test_measure_isolated_on_openvino(tmp_path):
    from .test_quant import _conv_model

    heavy = tmp_path / "heavy.onnx"
    onnx.save(_conv_model([64, 64, 64]), heavy)
    images = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    lat = measure_isolated({"light": _conv_model([]), "heavy": str(heavy)}, images, batch=4, threads=1, rounds=2,
                           seconds=0.05, backend="openvino")
    assert lat["heavy"].throughput * 5 < lat["light"].throughput


def test_missing_openvino_is_one_line(monkeypatch, tmp_path, cli, fp32_onnx):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(CompressorError, match=r'OpenVINO is not installed; install the extra with pip install -e "\.\[openvino\]"'):
        openvino.import_openvino()
    code, _, err = cli("bench", fp32_onnx, "--backend", "openvino")
    assert code == 2 and err.startswith("error: OpenVINO is not installed") and err.strip().count("\n") == 0
    recipe = {"model": {"name": "cifar_resnet20", "weights": str(DEMO_TEACHER)}, "data": {"path": str(DEMO_DATA)},
              "targets": ["ort-cpu", "openvino-cpu"]}
    with pytest.raises(CompressorError, match="OpenVINO is not installed"):
        compressor.compress(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()



def test_a_model_openvino_cannot_read_is_one_line_with_its_cause(tmp_path):
    """OpenVINO's messages open with source-location lines; the error keeps the cause and names a fix."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(CompressorError) as info:
        openvino.compile_model(broken, 1, "f32")
    message = str(info.value)
    assert message.startswith("OpenVINO could not compile broken.onnx: ") and "\n" not in message
    assert "Exception from" not in message and "ort-cpu" in message

def test_pipeline_times_each_target_and_exports_checked_int8_ir(tmp_path, monkeypatch):
    monkeypatch.setattr(Quantize, "measure_latency", staticmethod(quant_latency()))
    clock = PairedClock()
    monkeypatch.setattr(runner, "measure_isolated", clock)
    recipe = {
        "model": {"name": "cifar_resnet20", "weights": str(DEMO_TEACHER)},
        "data": {"path": str(DEMO_DATA), "validation": 200, "calibration": 100},
        "passes": [{"quantize": {"target": "openvino-cpu", "max_evals": 1, "warm_start_db": "none"}}],
        "export": ["onnx", "onnx_int8", "openvino"], "targets": ["openvino-cpu", "ort-cpu"],
        "bench": {"batches": [1, 64], "duration": 0.02, "warmup": 0.01, "threads": 1}, "seed": 0,
    }
    out = tmp_path / "run"
    report = compressor.compress(recipe, out, progress=False)
    assert report.deployed == "model_int8.onnx" and (out / "model.xml").is_file() and (out / "model.bin").is_file()
    data = json.loads((out / "report.json").read_text())
    stages = {s["stage"]: s for s in data["stages"]}
    for name in ("teacher", "01_quantize", "export_onnx"):
        s = stages[name]
        assert set(s["latency"]) == {"openvino-cpu", "ort-cpu"} and s["latency"]["openvino-cpu"]["precision"] == "f32"
        assert s["latency_b1_p50_ms"] == s["latency"]["openvino-cpu"]["p50_b1_ms"]  # the first target is gated
        assert 80 < s["runtime_top1"]["openvino-cpu"] < 95
    ir = stages["export_openvino"]
    assert ir["details"]["parity"]["images"] == 1500 and ir["details"]["parity"]["top1_agreement"] >= 99.9
    # OpenVINO runs every conv and the linear layer of the IR in INT8 except those the search kept in float.
    q = stages["01_quantize"]["details"]
    assert ir["details"]["openvino_int8"] == q["openvino_int8"] and q["openvino_int8"]["compute_layers"] == 22
    assert len(q["openvino_int8"]["not_int8"]) == len(q["float_layers"])
    assert ir["top1"] == pytest.approx(stages["01_quantize"]["top1"], abs=0.2) and set(ir["latency"]) == {"openvino-cpu"}
    # The headline times, in the same rounds, the teacher and the deployed file on OpenVINO and the teacher in ORT.
    assert clock.calls[0][0] == {"teacher": ("00_teacher.onnx", "openvino"), "deployed": ("model_int8.onnx", "openvino"),
                                 "teacher_ort_fp32": ("00_teacher.onnx", "onnxruntime-cpu")}
    h = data["headline"]
    assert h["target"] == "openvino-cpu" and h["paired_rounds"] == 5 and h["vs_teacher"]["batch1_speedup"] == 2.0
    assert h["vs_teacher_ort_fp32"]["batch1_speedup"] == 2.5 and h["vs_teacher_ort_fp32"]["batch64_speedup"] == 3.75
    md = (out / "report.md").read_text()
    assert "img/s b64 openvino-cpu | p50 b1 ms ort-cpu" in md and "top-1 % openvino-cpu (f32)" in md


def test_layers_are_timed_by_their_kernels_and_adds_fuse_into_convs(tmp_path, fp32_onnx, monkeypatch):
    """The openvino-cpu latency table times a single layer by its kernels, without the reorders its graph pays at
    its edges (a whole model does not pay them between layers), and gives a residual Add no cost because the
    plugin fuses it into a conv: both checked on OpenVINO itself, so an OpenVINO that stops fusing fails here, not
    silently in the table."""
    from compressor.runtime import bench
    from compressor.runtime.bench import BenchSettings, Timed, measure_onnx_isolated
    from compressor.runtime.latency_targets import EMPTY, LayerShape, OpenVinoCpuTarget, int8_qdq

    target = OpenVinoCpuTarget(threads=1)
    shape = LayerShape("conv", 16, 16, 32, 32, 3, 1, 1, act="relu")
    path = tmp_path / "conv.onnx"
    onnx.save(target.layer_model(shape, "int8"), path)
    request = openvino.compile_model(path, 1, "f32", 8, perf_count=True).create_infer_request()
    clock = openvino.KernelClock(request, skip=2)
    conv_us = {}
    for call in range(1, 5):
        request.infer({0: np.zeros((8, 16, 32, 32), np.uint8)})
        kernel = clock.tick()
        executed = [p for p in request.get_profiling_info() if str(p.status).endswith("EXECUTED")]
        conv_us[call] = sum(p.real_time.total_seconds() * 1e6 for p in executed if p.node_type == "Convolution")
    types = collections.Counter(p.node_type for p in executed)
    assert types["Reorder"] >= 1 and set(types) == {"Reorder", "Convolution"}  # the boundary reorders exist
    # The mean of calls 3 and 4 from the running means after calls 2 and 4, the conv alone: Reorders left out.
    assert kernel == pytest.approx((4 * conv_us[4] - 2 * conv_us[2]) / 2 / 1e3)
    run = openvino.runner(path, 8, 1, kernels=True)
    assert 0 < run() < 1e3 and openvino.runner(path, 8, 1)() is None
    # Through bench's child process, and only on OpenVINO.
    settings = BenchSettings(warmup=0.01, duration=0.05, iterations=8, threads=1)
    measured = measure_onnx_isolated([Timed(path, "openvino", kernels=True)], [8], settings)
    assert all(v > 0 for v in measured[8][0][0])
    done = _child(["--child", str(path), "--batches", "1", "--settings", json.dumps(dataclasses.asdict(settings)),
                   "--kernels"])
    assert done.returncode == 2 and "--kernels needs --backend openvino" in done.stderr
    # The table times layers less their reorders and whole models as they are.
    specs = []

    def spy(paths, batches, settings, **kwargs):
        specs.extend(paths)
        return {b: [([1.0], 1.0, [1.0]) for _ in paths] for b in batches}

    monkeypatch.setattr(bench, "measure_onnx_isolated", spy)
    target.time_layer(shape, "int8", [1])
    from compressor.core.zoo import ZOO

    target.time_models([(ZOO["cifar_resnet20"]().eval(), "fp32")], (3, 32, 32), [1])
    assert [s.kernels for s in specs] == [True, False] and {s.backend for s in specs} == {"openvino"}
    assert "layer_timing" in target.fingerprint()
    with pytest.raises(CompressorError, match="needs the openvino backend"):
        Timed(path, "onnxruntime-cpu", kernels=True)
    # Every residual Add of the INT8 ResNet-20 is fused into a convolution of OpenVINO's execution graph, so the
    # table gives an add the empty layer's cost.
    assert target.deployed_shape(LayerShape("add", 16, 16, 32, 32, act="relu"), "int8") == EMPTY
    int8 = int8_qdq(onnx.load(fp32_onnx), "openvino-cpu")
    ops = openvino.compile_model(int8.SerializeToString(), 1, "f32", 2).get_runtime_model().get_ordered_ops()
    info = [{k: v.astype(str) for k, v in op.get_rt_info().items()} for op in ops]
    fused = [name for rt in info if rt.get("layerType") == "Convolution"
             for name in rt.get("originalLayersNames", "").split(",") if name.endswith("/Add")]
    assert len(fused) == 9 and not [rt for rt in info if rt.get("layerType") in ("Eltwise", "Add")]


def test_kernel_clock_averages_the_inferences_after_the_first_ones():
    """OpenVINO's counters are running means since compilation of per-call times truncated to whole microseconds;
    the clock must give the mean of the calls after ``skip`` (a slow first call left out), without the Reorders
    and the nodes that did not run."""
    durations = {"Convolution": [900.4, 50.7, 40.2, 60.9, 50.5, 50.1], "Reorder": [30.0] * 6, "Add": [0.0] * 6}
    seen = {k: [] for k in durations}

    class Node:
        def __init__(self, kind, times):
            self.node_name, self.node_type = kind.lower(), kind
            self.status = "Status.EXECUTED" if sum(times) else "Status.NOT_RUN"
            mean_us = sum(int(t) for t in times) // len(times)  # truncated per call, mean floored, as OpenVINO
            self.real_time = types.SimpleNamespace(total_seconds=lambda: mean_us / 1e6)

    class Request:
        def get_profiling_info(self):
            return [Node(k, v) for k, v in seen.items()]

    clock = openvino.KernelClock(Request(), skip=1)
    ticks = []
    for i in range(6):
        for k in durations:
            seen[k].append(durations[k][i])
        ticks.append(clock.tick())
    assert ticks[0] == pytest.approx(0.900)  # before the skip: the running mean, Reorders out
    truth = np.mean(durations["Convolution"][1:]) / 1e3
    assert abs(ticks[-1] - truth) < 2e-3 and abs(ticks[-1] - np.mean(durations["Convolution"]) / 1e3) > 0.1
