"""Quantune-style PTQ: QDQ emission per target, TensorRT rules, one calibration per size, tuner, speed check."""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from onnxruntime import quantization as ortq

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.zoo import ZOO
from compressor.errors import CompressorError
from compressor.passes.base import Context
from compressor.passes.quantize import Quantize
from compressor.quant import qdq as qdq_module
from compressor.quant import tuner as tuner_module
from compressor.quant.calibrate import Calibrator, StatsTable
from compressor.quant.problem import QuantProblem, top1_onnx
from compressor.quant.qdq import quantize
from compressor.quant.qdq_rules import check_tensorrt
from compressor.quant.selection import candidates, choose, deployment, speed_check
from compressor.quant.space import TECHNIQUES, QuantConfig, config_space
from compressor.quant.tuner import (
    DEFAULT_DB,
    Budget,
    GeneticSearch,
    RandomSearch,
    Record,
    XGBoostTuner,
    features,
    load_db,
    search,
)
from compressor.runtime.export import export_onnx
from compressor.runtime.latency import Latency, measure_isolated

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = ROOT / "demo" / "cifar10-demo.tar.gz"
DEMO_TEACHER = ROOT / "demo" / "cifar10_resnet20.pt"


@pytest.fixture(scope="module")
def splits():
    return make_splits(load_dataset(DEMO_DATA), 0, validation=500, calibration=500)


@pytest.fixture(scope="module")
def teacher():
    model = ZOO["cifar_resnet20"]()
    model.load_state_dict(torch.load(DEMO_TEACHER, weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def problem(splits, teacher, tmp_path_factory):
    path = export_onnx(teacher, tmp_path_factory.mktemp("quant") / "fp32.onnx", (3, 32, 32))
    return QuantProblem(onnx.load(path), splits.calibration, splits.validation, Preprocess())


@pytest.fixture(scope="module")
def fp32_val(problem, splits):
    return top1_onnx(problem.float_model, splits.validation, Preprocess())


def optimized_op_counts(model: onnx.ModelProto, tmp_path: Path) -> collections.Counter:
    """Op types ORT actually runs after its graph optimisations (QDQ fusion, layout)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def test_ort_cpu_qdq_is_valid_accurate_and_fully_integer(problem, splits, fp32_val, tmp_path):
    qdq = problem.build(QuantConfig(1000, "max", "asymmetric", "per_channel", "int8"))
    onnx.checker.check_model(qdq, full_check=True)
    acc = top1_onnx(qdq, splits.validation, Preprocess())
    assert acc >= fp32_val - 2.0, (acc, fp32_val)
    ops = optimized_op_counts(qdq, tmp_path)
    # Every conv and residual add runs as an integer kernel; no float Conv/Add/Pad island is left, and the two
    # option-A shortcuts run as 1x1 QLinearConvs (19 + 2) instead of Slice/Pad on NHWC bytes.
    assert ops["QLinearConv"] == 21 and ops["Conv"] == 0, ops
    assert ops["Slice"] == 0 and ops["Pad"] <= 1, ops  # the one Pad left is the stem's channel padding
    assert ops["QLinearAdd"] == 9 and ops["Add"] == 0, ops
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops
    assert ops["Transpose"] <= 2, ops


def test_stem_input_channels_padded_to_four_without_changing_outputs(problem, splits, monkeypatch):
    config = QuantConfig(1000, "entropy", "asymmetric", "per_channel", "int8")
    padded = problem.build(config)
    monkeypatch.setattr(qdq_module, "pad_input_channels", lambda model, multiple=4: 0)
    plain = problem.build(config)
    onnx.checker.check_model(padded, full_check=True)
    shapes = {i.name: tuple(i.dims) for i in padded.graph.initializer}
    conv_weights = [shapes[i] for i in shapes if i.endswith("_quantized") and len(shapes[i]) == 4]
    assert (16, 4, 3, 3) in conv_weights and all(s[1] % 4 == 0 for s in conv_weights), conv_weights
    x = Preprocess()(splits.validation.images[:64]).numpy()
    outputs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
               for m in (padded, plain)]
    np.testing.assert_array_equal(*outputs)


def _outputs(models, x):
    return [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            for m in models]


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric_uint8"])
def test_option_a_shortcut_as_strided_conv_is_bit_identical(problem, splits, monkeypatch, scheme):
    config = QuantConfig(1000, "entropy", scheme, "per_channel", "int8")
    rewritten = problem.build(config)
    monkeypatch.setattr(qdq_module, "shortcut_convs", lambda model: 0)
    plain = problem.build(config)
    onnx.checker.check_model(rewritten, full_check=True)
    ops = collections.Counter(n.op_type for n in rewritten.graph.node)
    assert ops["Slice"] == 0 and ops["Conv"] == 21, ops
    assert collections.Counter(n.op_type for n in plain.graph.node)["Slice"] == 4
    used = {i for n in rewritten.graph.node for i in n.input}
    assert all(i.name in used for i in rewritten.graph.initializer)  # the shortcuts' constants are gone
    np.testing.assert_array_equal(*_outputs((rewritten, plain), Preprocess()(splits.validation.images[:64]).numpy()))


def test_shortcut_conv_after_pruning_with_uneven_padding(teacher, splits, tmp_path, monkeypatch):
    import copy

    from compressor.graph.dependency import DependencyGraph
    from compressor.graph.modules import ChannelPadShortcut

    graph, rng = DependencyGraph(teacher, (3, 32, 32)), np.random.default_rng(0)
    pruned = copy.deepcopy(teacher)
    graph.prune([g for g in graph.groups() if rng.random() < 0.3], pruned)  # residual and inner channels alike
    pads = {(m.left, m.right) for m in pruned.modules() if isinstance(m, ChannelPadShortcut)}
    assert any(left != right for left, right in pads), pads  # residual pruning made the padding uneven
    path = export_onnx(pruned, tmp_path / "pruned.onnx", (3, 32, 32))
    problem = QuantProblem(onnx.load(path), splits.calibration, splits.validation, Preprocess())
    config = QuantConfig(1000, "max", "asymmetric", "per_channel", "int8")
    rewritten = problem.build(config)
    assert collections.Counter(n.op_type for n in rewritten.graph.node)["Slice"] == 0
    monkeypatch.setattr(qdq_module, "shortcut_convs", lambda model: 0)
    plain = problem.build(config)
    x = Preprocess()(splits.validation.images[:64]).numpy()
    int8, int8_plain, fp32 = _outputs((rewritten, plain, problem.float_model), x)
    np.testing.assert_array_equal(int8, int8_plain)
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("config", [QuantConfig(1000, "max", "asymmetric", "per_channel", "int8"),
                                    QuantConfig(1000, "max", "symmetric_uint8", "per_tensor", "int8", cle=True,
                                                bias_correction=True, adaround=True),
                                    QuantConfig(1000, "max", "symmetric", "per_channel", "int8"),
                                    QuantConfig(1000, "max", "asymmetric", "per_channel", "mixed")])
def test_pruned_widths_are_widened_to_four_instead_of_padded(teacher, splits, tmp_path, monkeypatch, config):
    """A conv read only by convs gets zero output channels up to a multiple of four and its readers zero input
    channels: no Pad between them (ORT runs a channel Pad on NHWC bytes one pixel at a time), outputs unchanged,
    also through AdaRound and bias correction, which see the float layer's channels only."""
    import copy

    from compressor.graph.dependency import DependencyGraph
    from compressor.quant.adaround import AdaRoundSettings

    graph, rng = DependencyGraph(teacher, (3, 32, 32)), np.random.default_rng(1)
    pruned = copy.deepcopy(teacher)
    graph.prune([g for g in graph.groups() if not g.residual and rng.random() < 0.3], pruned)  # inner widths only
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(w % 4 != 0 for w in widths) >= 5, widths
    path = export_onnx(pruned, tmp_path / "pruned.onnx", (3, 32, 32))
    settings = AdaRoundSettings(iterations=10, columns=1024, batch=256)
    models = []
    for widen in (True, False):
        if not widen:
            monkeypatch.setattr(qdq_module, "widen_producers", lambda model, multiple=4: 0)
        problem = QuantProblem(onnx.load(path), splits.calibration, splits.validation, Preprocess(), adaround=settings,
                               weight_images=32)
        models.append(problem.build(config))
    widened, padded = models
    onnx.checker.check_model(widened, full_check=True)
    pads = [sum(n.op_type == "Pad" and n.name.endswith("_channel_pad") for n in m.graph.node) for m in models]
    assert pads[1] == 1 + sum(w % 4 != 0 for w in widths), pads
    # The stem's Pad is left; with mixed precision also the Pad after a producer kept in float (not widened).
    assert pads[0] == 1 if config.precision == "int8" else 1 < pads[0] < pads[1], pads
    weights = [numpy_helper.to_array(i).shape for i in widened.graph.initializer if i.name.endswith("_quantized")
               or "_widened" in i.name or "_adarounded" in i.name]
    assert all(w[0] % 4 == 0 and w[1] % 4 == 0 for w in weights if len(w) == 4), weights
    # The QDQ graphs as written (no fusion) compute the same numbers: the added terms are exact zeros. Optimized,
    # ORT may fuse differently around a Pad (int8 activations: a float conv behind the Pad), so compare unfused.
    x = Preprocess()(splits.validation.images[:64]).numpy()
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outs = [ort.InferenceSession(m.SerializeToString(), plain, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            for m in models]
    np.testing.assert_array_equal(*outs)
    ops = [optimized_op_counts(m, tmp_path)["Pad"] for m in models]
    assert ops[1] - ops[0] == pads[1] - pads[0], ops  # ORT's rewrites leave the difference as it is


def test_depthwise_layers_pass_the_widening_on(splits, tmp_path, monkeypatch):
    """MobileNetV2 with pruned hidden channels: expand (dense) → depthwise → project (dense). The expand conv's
    zero channels go through the depthwise conv, which grows with them, so no Pad is left before any project
    conv, and the QDQ graph computes the same numbers."""
    import copy

    from compressor.graph.dependency import DependencyGraph

    torch.manual_seed(0)
    model = ZOO["cifar_mobilenetv2"]().eval()
    graph, rng = DependencyGraph(model, (3, 32, 32)), np.random.default_rng(0)
    pruned = copy.deepcopy(model)
    graph.prune([g for g in graph.groups() if not g.residual and rng.random() < 0.2], pruned)
    depthwise = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert sum(c % 4 != 0 for c in depthwise) >= 5, depthwise
    path = export_onnx(pruned, tmp_path / "mbv2.onnx", (3, 32, 32))
    models = []
    for widen in (True, False):
        if not widen:
            monkeypatch.setattr(qdq_module, "widen_producers", lambda model, multiple=4: 0)
        problem = QuantProblem(onnx.load(path), splits.calibration, splits.validation, Preprocess())
        models.append(problem.build(QuantConfig(1000, "max", "asymmetric", "per_channel", "int8")))
    onnx.checker.check_model(models[0], full_check=True)
    pads = [sum(n.op_type == "Pad" and n.name.endswith("_channel_pad") for n in m.graph.node) for m in models]
    assert pads[0] == 1 and pads[1] > 5, pads
    groups = [qdq_module.attribute(n, "group", 1) for n in models[0].graph.node if n.op_type == "Conv"]
    assert all(gr % 4 == 0 for gr in groups if gr > 1), groups
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = Preprocess()(splits.validation.images[:32]).numpy()
    outs = [ort.InferenceSession(m.SerializeToString(), plain, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            for m in models]
    np.testing.assert_array_equal(*outs)


class _SharedReaders(torch.nn.Module):
    """The RGB input read by three convs (inception branches), a 6-channel tensor read by a 1×1 conv, its 1×1
    projection and a grouped 3×3 (a ResNeXt block), and one conv called twice: every reader needs padding to 4
    or 8 input channels, but each tensor and weight must be padded once."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.b1, self.b2, self.b3 = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 3, padding=1), nn.Conv2d(3, 2, 1)
        self.conv, self.proj, self.grouped = nn.Conv2d(6, 6, 1), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.shared, self.linear = nn.Conv2d(6, 6, 3, padding=1), nn.Linear(6, 10)

    def forward(self, x):
        x = torch.relu(torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1))
        x = torch.relu(self.conv(x) + self.proj(x) + self.grouped(x))
        x = torch.relu(self.shared(torch.relu(self.shared(x))))
        return self.linear(x.mean((2, 3)))


def test_tensors_read_by_several_convs_are_padded_once(splits, tmp_path):
    torch.manual_seed(0)
    path = export_onnx(_SharedReaders().eval(), tmp_path / "shared.onnx", (3, 32, 32))
    problem = QuantProblem(onnx.load(path), splits.calibration, splits.validation, Preprocess())
    qdq = problem.build(QuantConfig(1000, "max", "asymmetric", "per_channel", "int8"))
    onnx.checker.check_model(qdq, full_check=True)
    names = [n.name for n in qdq.graph.node]
    assert len(names) == len(set(names)), collections.Counter(names).most_common(2)
    # One Pad each for the input, the concatenation and the shared conv's two inputs; its weight padded once.
    assert collections.Counter(n.op_type for n in qdq.graph.node)["Pad"] == 4
    weights = [numpy_helper.to_array(i).shape for i in qdq.graph.initializer if i.name.endswith("_quantized")]
    assert sorted(w[1] for w in weights if len(w) == 4) == [3, 4, 4, 4, 8, 8, 8], weights
    x = Preprocess()(splits.validation.images[:64]).numpy()
    int8, fp32 = _outputs((qdq, problem.float_model), x)
    assert np.abs(int8 - fp32).max() < 0.05 * np.abs(fp32).max()
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9


def test_power_of_two_scales(problem, splits, fp32_val):
    qdq = problem.build(QuantConfig(1000, "max", "power_of_two", "per_channel", "int8"))
    scales = [numpy_helper.to_array(i) for i in qdq.graph.initializer if i.name.endswith("scale")]
    assert scales
    for s in scales:
        assert np.allclose(np.exp2(np.round(np.log2(s))), s), s
    assert top1_onnx(qdq, splits.validation, Preprocess()) >= fp32_val - 3.0


def test_tensorrt_target_is_compliant(problem, splits, fp32_val):
    ranges = problem.calibrator.ranges(1000, "max")
    trt = quantize(problem.float_model, ranges, QuantConfig(1000, "max", "symmetric", "per_channel", "int8"), "tensorrt")
    onnx.checker.check_model(trt, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in trt.graph.initializer}
    qdq_nodes = [n for n in trt.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq_nodes
    for n in qdq_nodes:
        assert np.all(inits[n.input[2]] == 0) and inits[n.input[2]].dtype == np.int8, n.name
    producers = {o: n for n in trt.graph.node for o in n.output}
    for conv in (n for n in trt.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[1]].shape == (inits[dq.input[0]].shape[0],)  # one scale per output channel
        assert producers[conv.input[0]].op_type == "DequantizeLinear"
    assert not any(n.op_type.startswith("QLinear") or n.op_type.endswith("Integer") for n in trt.graph.node)
    assert check_tensorrt(trt) == []
    assert top1_onnx(trt, splits.validation, Preprocess()) >= fp32_val - 2.0


def test_check_tensorrt_flags_a_bad_model(problem, splits, tmp_path):
    bad = problem.build(QuantConfig(1000, "max", "asymmetric", "per_tensor", "int8"))  # ort-cpu emission
    problems = check_tensorrt(bad)
    assert any("non-zero zero point" in p for p in problems)
    assert any("per-tensor" in p for p in problems)
    bad.opset_import[0].version = 11
    assert any("opset 11" in p for p in check_tensorrt(bad))
    # QOperator format from ORT's own quantizer is rejected node by node.
    pp = Preprocess()

    class Reader(ortq.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": pp(splits.calibration.images[:50]).numpy()}])

        def get_next(self):
            return next(self.batches, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "qop.onnx"
    onnx.save(problem.float_model, src)
    ortq.quantize_static(str(src), str(dst), Reader(), quant_format=ortq.QuantFormat.QOperator)
    assert any("QOperator node QLinearConv" in p for p in check_tensorrt(onnx.load(dst)))


def test_statistics_collected_once_per_calibration_size(problem, splits):
    cal = Calibrator(problem.float_model, splits.calibration.subset(np.arange(200)), Preprocess())
    for size in (1, 1000, 10000):
        for clipping in ("max", "entropy", "percentile"):
            cal.ranges(size, clipping)
    assert cal.runs == 2  # 1000 and 10000 both cap at the 200 images given
    table = cal.table(1000)
    assert table.images == 200
    again = StatsTable.from_dict(table.as_dict())  # plain and serialisable
    name = next(iter(table.tensors))
    assert np.array_equal(again.tensors[name].hist, table.tensors[name].hist)
    lo, hi = cal.ranges(1000, "max")[name]
    elo, ehi = cal.ranges(1000, "entropy")[name]
    assert lo <= elo <= ehi <= hi
    # A search through the problem reuses the problem's own tables: evaluations add no calibration runs.
    problem.calibrator.table(10000)
    runs = problem.calibrator.runs
    for cfg in (QuantConfig(1000, "entropy", "asymmetric", "per_channel", "int8"),
                QuantConfig(10000, "percentile", "symmetric_uint8", "per_tensor", "int8"),
                QuantConfig(1000, "max", "power_of_two", "per_channel", "mixed")):
        problem.evaluate(cfg)
    assert problem.calibrator.runs == runs


def test_mixed_precision_keeps_measured_sensitive_layers_in_float(problem):
    cfg = QuantConfig(1, "max", "asymmetric", "per_tensor", "mixed")
    kept = problem.float_layers(cfg)
    assert len(kept) == 2  # 10 % of 20 weighted layers
    qdq = problem.build(cfg)
    producers = {o: n for n in qdq.graph.node for o in n.output}
    for node in (n for n in qdq.graph.node if n.name in kept):
        assert node.input[1] not in producers or producers[node.input[1]].op_type != "DequantizeLinear"


def _synthetic_accuracy(config: QuantConfig) -> float:
    """A deterministic landscape with structure the regressor can learn."""
    score = 90.0 + {"max": 0.0, "entropy": 0.6, "percentile": 0.4, "mse": 0.5}[config.clipping]
    score += 0.3 * config.cle + 0.2 * config.bias_correction + 0.4 * config.adaround
    score += {"asymmetric": 0.3, "symmetric": -1.0, "symmetric_uint8": 0.2, "power_of_two": -0.5}[config.scheme]
    score += 0.5 * (config.granularity == "per_channel") + 0.2 * (config.precision == "mixed")
    return score - 3.0 * (config.calibration == 1)


def test_tuners_are_reproducible_and_respect_budgets():
    space = config_space("ort-cpu", 500)
    desc = {"nodes": 50.0, "conv": 19.0, "bn": 19.0, "act": 19.0, "skip": 9.0, "depthwise": 0.0, "pointwise": 0.0,
            "size_mb": 1.1}
    runs = [search(XGBoostTuner(desc, 92.0), space, _synthetic_accuracy, Budget(8), seed=3) for _ in range(2)]
    assert [s.config for s in runs[0].steps] == [s.config for s in runs[1].steps]
    assert len(runs[0].steps) == 8 and runs[0].stop == "evaluation budget"
    other = search(XGBoostTuner(desc, 92.0), space, _synthetic_accuracy, Budget(8), seed=4)
    assert [s.config for s in other.steps] != [s.config for s in runs[0].steps]
    for strategy in (RandomSearch(), GeneticSearch()):
        res = search(strategy, space, _synthetic_accuracy, Budget(30), seed=0)
        assert len({s.config for s in res.steps}) == len(res.steps) == 30
        assert res.curve() == sorted(res.curve())
    best = max(_synthetic_accuracy(c) for c in space)
    hit = search(RandomSearch(), space, _synthetic_accuracy, Budget(len(space), None, best), seed=0)
    assert hit.stop == "accuracy target" and hit.best.val_top1 == best
    ticks = iter(range(100))
    timed = search(RandomSearch(), space, _synthetic_accuracy, Budget(50, 3.0), seed=0, clock=lambda: next(ticks))
    assert timed.stop == "time budget" and len(timed.steps) < 50


def test_xgboost_learns_from_measurements():
    space = config_space("ort-cpu", 500)
    desc = {"nodes": 50.0, "conv": 19.0, "bn": 19.0, "act": 19.0, "skip": 9.0, "depthwise": 0.0, "pointwise": 0.0,
            "size_mb": 1.1}
    best = max(_synthetic_accuracy(c) for c in space)
    xgb_evals = [len(search(XGBoostTuner(desc, 92.0), space, _synthetic_accuracy, Budget(len(space), None, best),
                            seed=s).steps) for s in range(2)]
    rnd_evals = [len(search(RandomSearch(), space, _synthetic_accuracy, Budget(len(space), None, best),
                            seed=s).steps) for s in range(2)]
    assert np.mean(xgb_evals) < np.mean(rnd_evals), (xgb_evals, rnd_evals)


def test_prior_transfer_fades_and_learns_what_contradicts_it(monkeypatch):
    """The default transfer (a prior regressor from other models, fading as this model's measurements come in) must
    let a few of this model's own measurements overrule the prior when they contradict it by tenths of a point, as
    on our flat INT8 spaces; the paper's pooling with gamma 3 cannot split on them (lab note, section 7)."""
    space = config_space("ort-cpu", 500)
    desc = {"nodes": 50.0, "conv": 19.0, "bn": 19.0, "act": 19.0, "skip": 9.0, "depthwise": 0.0, "pointwise": 0.0,
            "size_mb": 1.1}

    def other(c: QuantConfig) -> float:  # elsewhere max clipping wins by a point
        return 89.0 + (c.clipping == "max") - 2.0 * (c.calibration == 1)

    def own(c: QuantConfig) -> float:  # here MSE clipping wins, by 0.3 point
        return 90.0 + 0.3 * (c.clipping == "mse") - 2.0 * (c.calibration == 1)

    db = [Record(name, {**desc, "conv": conv}, c, other(c), 90.0) for name, conv in (("a", 20.0), ("b", 21.0))
          for c in space]
    rng = random.Random(0)
    tuner = XGBoostTuner(desc, 90.0, db)
    first = tuner.propose({}, space, rng)  # before any own measurement: the prior alone
    assert first.clipping == "max" and first.calibration != 1
    measured = {c: own(c) for c in random.Random(1).sample(space, 24)}
    pred = tuner.predict(measured, space, rng)
    by_clipping = {k: np.mean([p for c, p in zip(space, pred) if c.clipping == k and c.calibration != 1])
                   for k in ("max", "mse")}
    assert by_clipping["mse"] > by_clipping["max"], by_clipping
    assert tuner.propose(measured, [c for c in space if c not in measured], rng).clipping == "mse"
    # Both the fit and the prediction start from the faded prior: measured configurations come back near their own
    # measurements (a prediction without the margin would be off by the prior's whole point).
    at_measured = tuner.predict(measured, list(measured), random.Random(2))
    assert np.abs(at_measured - (np.asarray(list(measured.values())) - 90.0)).max() < 0.1
    # The prior fades: with half-life 4, after 24 measurements its weight is 2^-6 < 0.05 and it is dropped, so the
    # tuner predicts exactly as one that never had a database.
    monkeypatch.setattr(tuner_module, "PRIOR_HALF_LIFE", 4.0)
    faded = XGBoostTuner(desc, 90.0, db).predict(measured, space, random.Random(3))
    assert np.array_equal(faded, XGBoostTuner(desc, 90.0).predict(measured, space, random.Random(3)))
    monkeypatch.setattr(tuner_module, "PRIOR_HALF_LIFE", 64.0)
    assert not np.array_equal(XGBoostTuner(desc, 90.0, db).predict(measured, space, random.Random(3)), faded)
    with pytest.raises(ValueError, match="choose one of"):
        XGBoostTuner(desc, 90.0, db, transfer="mixed")
    # Why not the paper's way: pooled with its eta 0.15 / gamma 3, the same measurements leave the prior in charge.
    monkeypatch.setattr(tuner_module, "XGB_PARAMS", {**tuner_module.XGB_PARAMS, "eta": 0.15, "gamma": 3.0})
    pooled = XGBoostTuner(desc, 90.0, db, transfer="pooled").predict(measured, space, rng)
    assert np.mean([p for c, p in zip(space, pooled) if c.clipping == "max" and c.calibration != 1]) > np.mean(
        [p for c, p in zip(space, pooled) if c.clipping == "mse" and c.calibration != 1])


def test_search_benchmark_strategies_get_the_right_database(tmp_path):
    """quant_search's labels: the pass's tuner (prior), Quantune's pooling and the cold tuner (no database); and
    --grids-from-db turns each database model into a grid of its records, in order."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("quant_search", ROOT / "benchmarks" / "quant_search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    records = load_db(DEFAULT_DB)
    grids = bench.grids_from_db(DEFAULT_DB)
    name = records[0].model
    g = grids[name]
    assert [QuantConfig(**r["config"]) for r in g["results"]] == [r.config for r in records if r.model == name]
    made = {label: bench.make_strategy(label, g, name, records) for label in bench.STRATEGY_LABELS}
    assert made["xgboost (transfer)"].transfer == "prior" and made["xgboost (transfer)"].db
    assert made["xgboost (pooled transfer)"].transfer == "pooled" and made["xgboost (pooled transfer)"].db
    assert not made["xgboost (no transfer)"].db
    assert all(r.model != name for r in made["xgboost (transfer)"].db)
    assert isinstance(made["random"], RandomSearch) and isinstance(made["ga"], GeneticSearch)
    with pytest.raises(SystemExit, match="drop --warm-db"):
        bench.main(["search", "--grids-from-db", str(DEFAULT_DB), "--warm-db", str(tmp_path / "other.json"),
                    "--out", str(tmp_path)])
    assert json.loads(DEFAULT_DB.read_text())["models"][0]["model"] == name


def test_warm_start_database_loads():
    records = load_db(DEFAULT_DB)
    models = {r.model for r in records}
    assert len(models) >= 2 and len(records) >= 48
    assert all(isinstance(r.config, QuantConfig) for r in records)
    # Real measurements of trained models: the best configuration of every model is far above chance (10 %).
    assert all(max(r.val_top1 for r in records if r.model == m) > 50 for m in models)
    # Rebuilt from grids of the toolbox space: every toolbox knob was measured both on and off.
    for knob in TECHNIQUES:
        assert {getattr(r.config, knob) for r in records} == {False, True}, knob
    r0 = records[0]
    assert len(features(r0.config, r0.descriptors)) == len(r0.config.one_hot()) + 8
    tuner = XGBoostTuner(r0.descriptors, r0.fp32_val_top1, records, r0.model)
    assert tuner.db and all(r.model != r0.model for r in tuner.db)  # leave-current-model-out
    rng = random.Random(0)
    assert tuner.propose({}, config_space("ort-cpu"), rng) in config_space("ort-cpu")


def _lat(ms: float, ips: float, load: tuple[float, ...] = (1.0, 0.97, 1.03, 0.99, 1.01)) -> Latency:
    """Five timing rounds of a model whose speed in round i is its median speed times ``load[i]`` (host load)."""
    return Latency(ms, ips, 64, tuple(ips * f for f in load), tuple(ms / f for f in load))


BURSTS = (1.0, 0.6, 1.0, 0.6, 1.0)  # a host that slows every model timed in rounds 2 and 4


def test_speed_check_decides_only_beyond_noise():
    fp32 = _lat(0.70, 2000.0)
    fast = speed_check(fp32, _lat(0.35, 4200.0))
    assert fast["int8_faster"] and fast["speed_verdict"] == "faster" and fast["speed_rule"].startswith("measured")
    assert fast["throughput_speedup"] == 2.1 and fast["batch1_speedup"] == 2.0
    slow = speed_check(fp32, _lat(1.40, 1100.0))
    assert not slow["int8_faster"] and slow["speed_verdict"] == "not faster"
    assert not speed_check(fp32, _lat(0.35, 2100.0), min_speedup=1.5)["int8_faster"]
    # Medians 10 % apart, but the rounds' ratios fall on both sides of 1: no timing decision, the fixed rule says
    # "not faster".
    noisy = speed_check(_lat(0.70, 2000.0, (0.9, 1.1, 1.0, 1.15, 0.95)), _lat(0.63, 2200.0, (1.2, 0.9, 1.0, 0.85, 1.1)))
    assert not noisy["int8_faster"] and noisy["speed_verdict"] == "within noise"
    assert noisy["speed_rule"].startswith("fixed rule") and noisy["throughput_speedup"] == 1.1
    # One burst of load during one INT8 round does not overturn four rounds at 2x ...
    burst = speed_check(fp32, _lat(0.35, 4000.0, (1.0, 1.0, 0.4, 1.0, 1.0)))
    assert burst["speed_verdict"] == "faster"
    # ... and load that slows both models of a round cancels in the paired ratio, though it spreads either model's
    # rounds over each other's.
    assert speed_check(_lat(0.7, 2000.0, BURSTS), _lat(0.55, 2600.0, BURSTS))["speed_verdict"] == "faster"
    # Without per-round figures (e.g. interleaved timing) nothing is known beyond noise.
    assert speed_check(Latency(0.70, 2000.0, 64), Latency(0.35, 4200.0, 64))["speed_verdict"] == "within noise"
    assert deployment(True, True) == "int8" and deployment(False, True) == "fp32" and deployment(False, False) == "int8"
    assert candidates({"a": 97.0, "b": 97.3, "c": 97.2, "d": 97.25, "e": 96.0}, 0.1) == ["b", "d", "c"]
    assert candidates({"a": 97.0, "b": 97.3, "c": 97.2}, 0.05) == ["b"]


def test_choose_lets_timing_decide_only_beyond_noise_and_for_a_real_gain():
    space = config_space("ort-cpu")
    a, b, c = space[0], space[1], space[2]
    results = {a: 90.0, b: 90.0, c: 89.8}
    fp32 = _lat(0.5, 3000.0)

    def pick(lat, **kw):
        checks = {k: speed_check(fp32, v) for k, v in lat.items()}
        return choose([a, b, c], results, lat, checks, **{"speed_accuracy_budget": 0.5, "tolerance": 0.1, **kw})

    # a and b tie on accuracy; b is 12 % faster in every round. Without a second timing these rounds decide at the
    # default x1.05 ...
    close = {a: _lat(0.25, 6000.0), b: _lat(0.23, 6720.0), c: _lat(0.25, 6000.0)}
    assert pick(close)[0] == b
    # ... but a gain that close is first confirmed: the pair is timed again (b first), and there the longer timing
    # decides. Five rounds cannot tell a small gain from noise (the demo's repetitions in BENCHMARKS.md).
    asked = []

    def retime_to(ratio, ms=None, load=(1.0,) * 15):
        """Fifteen rounds of the candidate at ``ratio`` times the current choice's throughput (batch 1 likewise,
        unless ``ms`` is given)."""
        def retime(candidate, current):
            asked.append((candidate, current))
            return _lat(ms or 0.25 / ratio, 6000.0 * ratio, load), _lat(0.25, 6000.0, (1.0,) * 15)
        return retime

    best, rule = pick(close, retime=retime_to(1.02))
    assert best == a and asked == [(b, a)] and "no other ran at more than x1.05 its throughput" in rule
    assert "(1 close pair timed again)" in rule
    best, rule = pick(close, retime=retime_to(1.12))
    assert best == b and f"of {a.key()} in all but the most extreme quarter of 15 paired rounds, timed again" in rule
    # A second timing that kept no paired rounds is an error, not a silent skip.
    with pytest.raises(ValueError, match="kept no paired rounds"):
        pick(close, retime=lambda cand, cur: (Latency(0.2, 7000.0, 64), Latency(0.25, 6000.0, 64)))
    # Three disturbed rounds of fifteen (the most extreme quarter) do not overturn the second timing ...
    assert pick(close, retime=retime_to(1.12, load=(0.5,) * 3 + (1.0,) * 12))[0] == b
    # ... nor does it replace a choice that it shows slower at batch 1 beyond noise.
    best, rule = pick(close, retime=retime_to(1.12, ms=0.4))
    assert best == a and "slower at batch 1 beyond noise" in rule
    # Equal speed is not close: nothing is timed again, and the fixed order keeps a; a higher gain is asked of b.
    asked.clear()
    best, rule = pick({a: _lat(0.25, 6000.0), b: _lat(0.25, 6000.0), c: _lat(0.25, 6000.0)}, retime=retime_to(2.0))
    assert best == a and asked == [] and "fixed order" in rule
    assert pick(close, min_speed_gain=0.2, retime=retime_to(1.12))[0] == a and asked == []
    # b is twice as fast: speed decides the tie, also with a burst of load in one of b's rounds, and with load that
    # slows both in the same rounds.
    for load_a, load_b in [((1.0,) * 5, (1.0, 1.0, 0.5, 1.0, 1.0)), (BURSTS, BURSTS)]:
        # A gain that clear needs no second timing (this retime would fail the test).
        asked.clear()
        best, rule = pick({a: _lat(0.25, 6000.0, load_a), b: _lat(0.2, 12000.0, load_b), c: _lat(0.25, 6000.0)},
                          retime=retime_to(0.5))
        assert best == b and f"more than x1.05 the throughput of {a.key()}" in rule and "timed again" not in rule
        assert asked == []
    # Asked for more than the clear gain (0.6), a pair read at 1.55-1.71x (trimmed: 1.55-1.64) is close: timed again.
    steady = (1.0,) * 5
    best, rule = pick({a: _lat(0.25, 6000.0, steady), b: _lat(0.2, 9300.0, (1.0, 1.0, 1.06, 1.1, 1.04)),
                       c: _lat(0.25, 6000.0, steady)}, min_speed_gain=0.6, retime=retime_to(1.7))
    assert best == b and asked == [(b, a)] and "x1.6 the throughput" in rule and "timed again" in rule
    # A replacement confirmed by a second timing, then a clear one on the first rounds: the rule names the last.
    asked.clear()
    best, rule = pick({a: _lat(0.25, 6000.0), b: _lat(0.23, 6720.0), c: _lat(0.1, 14000.0)}, retime=retime_to(1.12),
                      speed_accuracy_budget=0.5)
    assert best == c and asked == [(b, a)] and f"of {b.key()} in all but the most extreme quarter of the" in rule
    # Exactly the gain asked, or equal speed with no gain asked, does not replace the more accurate one.
    assert pick({a: _lat(0.25, 6000.0), b: _lat(0.2, 9000.0), c: _lat(0.25, 6000.0)}, min_speed_gain=0.5)[0] == a
    assert pick({a: _lat(0.25, 6000.0), b: _lat(0.25, 6000.0), c: _lat(0.25, 6000.0)}, min_speed_gain=0)[0] == a
    # Rounds that cannot be paired (another count, or none kept) decide nothing; with 3 rounds all must agree.
    three = Latency(0.2, 12000.0, 64, (12000.0, 12000.0, 5000.0), (0.2, 0.2, 0.2))
    for other in (three, Latency(0.2, 12000.0, 64)):
        assert pick({a: _lat(0.25, 6000.0), b: other, c: _lat(0.25, 6000.0)})[0] == a
    a3 = Latency(0.25, 6000.0, 64, (6000.0,) * 3, (0.25,) * 3)
    assert pick({a: a3, b: dataclasses.replace(three, throughput_rounds=(12000.0,) * 3), c: a3})[0] == b
    # Only c is faster than FP32 beyond noise, and it is within the accuracy budget: c is written.
    best, rule = pick({a: _lat(0.5, 3100.0, (1.2, 0.8, 1.0, 0.9, 1.1)), b: _lat(0.5, 2900.0), c: _lat(0.25, 6000.0)})
    assert best == c and rule.startswith("the fastest candidate measured faster than FP32")
    # All three beat FP32; c gives up 0.2 pt (inside the 0.5 budget) for twice the throughput: speed wins.
    best, rule = pick({a: _lat(0.30, 4000.0), b: _lat(0.30, 4100.0), c: _lat(0.20, 8000.0)})
    assert best == c and f"of {a.key()}" in rule
    # A batch-1 median a little higher, within the rounds' noise, does not decide: c still wins on throughput.
    assert pick({a: _lat(0.30, 4000.0), b: _lat(0.30, 4100.0),
                 c: Latency(0.31, 8000.0, 64, (8000.0,) * 5, (0.27, 0.34, 0.31, 0.29, 0.33))})[0] == c
    # ... but slower at batch 1 beyond noise it does not, nor beyond a budget it exceeds, nor below an accuracy goal.
    best, rule = pick({a: _lat(0.30, 4000.0), b: _lat(0.30, 4100.0), c: _lat(0.35, 8000.0)})
    assert best == a and "slower at batch 1 beyond noise" in rule and "equally accurate" in rule
    fast3 = {a: _lat(0.3, 4000.0), b: _lat(0.3, 4000.0), c: _lat(0.2, 8000.0)}
    assert pick(fast3, floor=89.9)[0] == a and pick(fast3, speed_accuracy_budget=0.1)[0] == a
    # None beats FP32: speed never trades accuracy away, it only breaks the tie between a and b.
    slow = {a: _lat(0.6, 1800.0), b: _lat(0.55, 2900.0), c: _lat(0.3, 2950.0)}
    best, rule = pick(slow)
    assert best == b and rule.startswith("the most accurate candidate (none")


def test_selection_stability_benchmark_keeps_the_old_rule_for_comparison():
    """benchmarks/selection_stability.py judges each repetition by the pass's rule and by the rules before it:
    12 % faster in every round swayed the unpaired rule, not the paired one at x1.5; a burst in one round blinded
    the unpaired rule."""
    spec = importlib.util.spec_from_file_location("selection_stability",
                                                  ROOT / "benchmarks" / "selection_stability.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    space = config_space("ort-cpu")
    a, b = space[0], space[1]
    results, fp32 = {a: 90.0, b: 89.9}, _lat(0.5, 3000.0)
    close = {a: _lat(0.25, 6000.0), b: _lat(0.23, 6720.0)}
    assert bench.unpaired_choice([a, b], results, close, fp32, 0.5, 0.1, None, 1.0) == (b, True)
    checks = {k: speed_check(fp32, v) for k, v in close.items()}
    assert choose([a, b], results, close, checks, 0.5, 0.1, min_speed_gain=0.5)[0] == a
    burst = {a: _lat(0.25, 6000.0, (1.0, 1.0, 0.45, 1.0, 1.0)), b: _lat(0.23, 6720.0)}
    assert bench.unpaired_choice([a, b], results, burst, fp32, 0.5, 0.1, None, 1.0) == (b, True)  # a not faster than FP32: b alone is
    checks = {k: speed_check(fp32, v) for k, v in burst.items()}
    assert checks[a]["int8_faster"] and choose([a, b], results, burst, checks, 0.5, 0.1, min_speed_gain=0.5)[0] == a


def _conv_model(widths: list[int]) -> onnx.ModelProto:
    """float NCHW 3x32x32 -> a chain of 3x3 convs with these output widths (an empty list is one Relu)."""
    h = onnx.helper
    nodes, inits, prev, c_in = [], [], "input", 3
    for i, c_out in enumerate(widths):
        w = np.random.default_rng(i).standard_normal((c_out, c_in, 3, 3)).astype(np.float32) * 0.1
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(h.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        prev, c_in = f"c{i}", c_out
    nodes.append(h.make_node("Relu", [prev], ["output"]))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 3, 32, 32])],
                         [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_measure_isolated_times_each_model_in_a_child_process(tmp_path):
    heavy = tmp_path / "heavy.onnx"
    onnx.save(_conv_model([64, 64, 64]), heavy)  # ~75 M MACs per image against a bare Relu
    images = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    lat = measure_isolated({"light": _conv_model([]), "heavy": str(heavy)}, images, batch=4, threads=1, rounds=2,
                           seconds=0.05)
    assert lat["light"].batch == lat["heavy"].batch == 4
    assert lat["heavy"].throughput * 5 < lat["light"].throughput and lat["heavy"].batch1_ms > 5 * lat["light"].batch1_ms
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CompressorError, match="benchmarking bad.onnx in a child process failed"):
        measure_isolated({"bad": str(bad)}, images, batch=4, threads=1, rounds=1)


def test_quantize_pass_reports_and_falls_back_when_int8_is_slower(splits, teacher, tmp_path, monkeypatch):
    def slower_int8(models, images, batch, threads, progress, **kw):
        assert "fp32" in models and 1 <= len(models) - 1 <= 4
        return {k: _lat(0.5, 3000.0) if k == "fp32" else _lat(1.0, 1500.0) for k in models}

    monkeypatch.setattr(Quantize, "measure_latency", staticmethod(slower_int8))
    small = dataclasses.replace(splits, calibration=splits.calibration.subset(np.arange(100)),
                                validation=splits.validation.subset(np.arange(200)))
    ctx = Context(small, teacher, Preprocess(), (3, 32, 32), tmp_path, seed=0)
    cfg = Quantize.Config(max_evals=2, baselines=("random",), warm_start_db="none", adaround=False,
                          keep_float=("linear",))
    result = Quantize(cfg).run(teacher, ctx)
    d = result.metrics
    assert "linear" in d["float_layers"] and d["float_layers"][0] == "linear"
    assert result.artifact.path.exists() and result.plots["search"].exists()
    assert result.artifact.precision == "int8" and result.artifact.deploy is False
    assert d["int8_faster"] is False and d["deploy"] == "fp32" and "not faster" in d["speed_note"]
    assert d["val_top1"] >= d["fp32_val_top1"] - 3.0
    assert [s["strategy"] for s in d["search"]] == ["xgboost", "random"]
    # Statistics once per (graph, calibration size): the plain or equalized graph, 1 or 100 images.
    keys = [step["config"] for s in d["search"] for step in s["steps"]]
    assert d["calibration_runs"] == len({(k.split("-")[0], "-cle-" in k) for k in keys})
    assert result.model is teacher


def test_quantize_pass_deploys_a_faster_int8_candidate(splits, teacher, tmp_path, monkeypatch):
    def only_fusable_is_fast(models, images, batch, threads, progress, **kw):
        # Keys are "int8:<config key>"; pretend only fully fusable emissions (not symmetric int8, no float layers)
        # beat FP32, as measured on this CPU.
        def fast(k):
            return "-symmetric-" not in k and k.endswith("-int8")
        return {k: _lat(0.5, 3000.0) if k == "fp32" else _lat(0.25, 6000.0) if fast(k) else _lat(1.0, 1500.0)
                for k in models}

    monkeypatch.setattr(Quantize, "measure_latency", staticmethod(only_fusable_is_fast))
    small = dataclasses.replace(splits, calibration=splits.calibration.subset(np.arange(100)),
                                validation=splits.validation.subset(np.arange(200)))
    ctx = Context(small, teacher, Preprocess(), (3, 32, 32), tmp_path, seed=1)
    cfg = Quantize.Config(max_evals=4, strategy="grid", speed_accuracy_budget=100.0, cle=False, adaround=False,
                          bias_correction=False)
    result = Quantize(cfg).run(teacher, ctx)
    d = result.metrics
    assert result.artifact.deploy is True
    assert d["int8_faster"] is True and d["deploy"] == "int8" and d["throughput_speedup"] == 2.0
    assert d["int8_config"]["scheme"] != "symmetric" and d["int8_config"]["precision"] == "int8"


def test_quantize_pass_times_a_close_pair_again_before_a_small_gain_decides(splits, teacher, tmp_path, monkeypatch):
    # First timing: each candidate's rounds are such that any two read faster than each other in some rounds
    # (close both ways); timed again, the later candidate of each pair is 12 % faster in all 15 rounds.
    patterns = [(1.0, 1.1, 1.1, 1.2, 1.2), (1.1, 1.0, 1.3, 1.3, 1.1), (1.2, 1.2, 1.0, 1.1, 1.2),
                (1.3, 1.3, 1.2, 1.0, 1.1)]
    again = []

    def timing(models, images, batch, threads, progress, rounds=5):
        if rounds != 5:
            assert rounds == 15 and len(models) == 2 and "fp32" not in models
            again.append(list(models))
            return {k: _lat(0.25 / f, 6000.0 * f, (1.0,) * 15) for k, f in zip(models, (1.12, 1.0))}
        return {k: _lat(0.5, 3000.0) if k == "fp32" else _lat(0.25, 6000.0, patterns[i % 4])
                for i, k in enumerate(sorted(models))}

    monkeypatch.setattr(Quantize, "measure_latency", staticmethod(timing))
    small = dataclasses.replace(splits, calibration=splits.calibration.subset(np.arange(100)),
                                validation=splits.validation.subset(np.arange(200)))
    ctx = Context(small, teacher, Preprocess(), (3, 32, 32), tmp_path, seed=1)
    cfg = Quantize.Config(max_evals=3, strategy="grid", speed_accuracy_budget=100.0, accuracy_tolerance=100.0,
                          cle=False, adaround=False, bias_correction=False)
    d = Quantize(cfg).run(teacher, ctx).metrics
    assert len(d["latency_candidates"]) >= 2 and again and len(d["confirmations"]) == len(again)
    assert all(x["rounds"] == 15 and x["throughput_ratio_trimmed"] == [1.12, 1.12] for x in d["confirmations"])
    assert [[f"int8:{x['candidate']}", f"int8:{x['against']}"] for x in d["confirmations"]] == again
    # Each second timing found the later candidate faster, so the last one timed again is written.
    assert QuantConfig(**d["int8_config"]).key() == d["confirmations"][-1]["candidate"]
    assert "quarter of 15 paired rounds, timed again after close first rounds" in d["choice_rule"]


def test_onnxruntime_quantizer_api_is_the_one_we_drive():
    """qdq.py calls ORT's internal QDQQuantizer by keyword; a release that renames them must fail here, and the
    installed version must lie inside pyproject's tested range."""
    import inspect
    import re

    import onnxruntime
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    params = set(inspect.signature(QDQQuantizer.__init__).parameters)
    assert {"per_channel", "reduce_range", "weight_qType", "activation_qType", "tensors_range", "nodes_to_quantize",
            "nodes_to_exclude", "op_types_to_quantize", "extra_options"} <= params
    spec = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    upper = re.search(r'"onnxruntime>=[\d.]+,<([\d.]+)"', spec).group(1)
    installed = tuple(int(x) for x in onnxruntime.__version__.split(".")[:2])
    assert installed < tuple(int(x) for x in upper.split(".")[:2])


def test_search_benchmark_draws_held_out_validation_from_test(demo_splits):
    import importlib.util

    spec = importlib.util.spec_from_file_location("quant_search", Path(__file__).parents[1] / "benchmarks" / "quant_search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    held = bench.held_out_validation(demo_splits, 200, seed=0)
    test = demo_splits.test
    assert len(held.validation) == 200 and len(held.test) == len(test) - 200
    # The two halves partition test/ (no image in both), and calibration still comes from train/.
    rows = {x.tobytes() for x in test.images}
    val_rows, test_rows = {x.tobytes() for x in held.validation.images}, {x.tobytes() for x in held.test.images}
    assert val_rows | test_rows == rows and not val_rows & test_rows
    assert held.calibration is demo_splits.calibration
    assert np.array_equal(bench.held_out_validation(demo_splits, 200, seed=0).validation.labels, held.validation.labels)
    with pytest.raises(SystemExit, match="must lie between 1 and"):
        bench.held_out_validation(demo_splits, len(test), seed=0)
