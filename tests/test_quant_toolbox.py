"""The PTQ toolbox: cross-layer equalization, bias correction, AdaRound, MSE ranges, keep_float and the accuracy
goal, and the search space and database that carry them; on the demo ResNet-20 and data and on MobileNetV2."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.zoo import ZOO
from compressor.errors import CompressorError
from compressor.quant import weights
from compressor.quant.adaround import AdaRoundSettings, adaround, reconstruction_error
from compressor.quant.calibrate import TensorStats, intermediate_session, run_intermediates, tensor_range
from compressor.quant.equalize import equalize, pair_objective
from compressor.quant.fallback import accuracy_fallback, match_layers, module_name
from compressor.quant.problem import QuantProblem, top1_onnx
from compressor.quant.qdq import attribute, prepare_float, quantize
from compressor.quant.space import QuantConfig, config_space
from compressor.quant.tuner import XGBoostTuner, features, load_db
from compressor.runtime.export import export_onnx

ROOT = Path(__file__).resolve().parent.parent
PP = Preprocess()


@pytest.fixture(scope="module")
def splits():
    return make_splits(load_dataset(ROOT / "demo" / "cifar10-demo.tar.gz"), 0, validation=500, calibration=500)


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory):
    model = ZOO["cifar_resnet20"]()
    model.load_state_dict(torch.load(ROOT / "demo" / "cifar10_resnet20.pt", weights_only=True))
    return prepare_float(onnx.load(export_onnx(model.eval(), tmp_path_factory.mktemp("r20") / "f.onnx", (3, 32, 32))))


@pytest.fixture(scope="module")
def problem(resnet_onnx, splits):
    return QuantProblem(resnet_onnx, splits.calibration, splits.validation, PP,
                        adaround=AdaRoundSettings(iterations=40, columns=4096, batch=512), weight_images=64)


def _mobilenet_onnx(tmp_path: Path) -> onnx.ModelProto:
    """MobileNetV2 with random weights and BatchNorm statistics spread like a trained network's, so folded
    channels have unequal ranges."""
    torch.manual_seed(0)
    model = ZOO["cifar_mobilenetv2"]()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.exp(torch.randn(c))
            m.bias.data = 0.5 * torch.randn(c)
            m.running_mean = 0.3 * torch.randn(c)
            m.running_var = torch.exp(torch.randn(c))
    return prepare_float(onnx.load(export_onnx(model.eval(), tmp_path / "mnv2.onnx", (3, 32, 32))))


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _weights(model: onnx.ModelProto) -> tuple[dict, dict]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: n for n in model.graph.node}, inits


@pytest.mark.parametrize("net", ["resnet20", "mobilenetv2"])
def test_cross_layer_equalization_keeps_the_function_and_equalizes_ranges(net, resnet_onnx, splits, tmp_path):
    model = resnet_onnx if net == "resnet20" else _mobilenet_onnx(tmp_path)
    equalized, report = equalize(model)
    x = PP(splits.validation.images[:100]).numpy()
    ref, got = _logits(model, x), _logits(equalized, x)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    (nodes, before), (new_nodes, after) = _weights(model), _weights(equalized)
    gains = []
    for p in report.pairs:
        group = attribute(nodes[p.second], "group", 1)
        w1, w2 = before[nodes[p.first].input[1]], before[nodes[p.second].input[1]]
        e1, e2 = after[new_nodes[p.first].input[1]], after[new_nodes[p.second].input[1]]
        gains.append(pair_objective(e1, e2, group) - pair_objective(w1, w2, group))
        if p.act != "clip" and group == 1:  # a pair of its own: both sides end with the same range per channel
            r1 = np.abs(e1).reshape(e1.shape[0], -1).max(1)
            r2 = np.abs(e2).transpose(1, 0, 2, 3).reshape(e2.shape[1], -1).max(1)
            if net == "resnet20":
                np.testing.assert_allclose(r1, r2, rtol=1e-4)
    assert min(gains) >= -1e-6 and sum(gains) > 0
    if net == "resnet20":
        assert len(report.pairs) == 9 and report.as_dict()["channels_movable"] == report.as_dict()["channels"]
    else:  # ReLU6 lets only provably unclipped channels move; the linear projection → expansion pairs move fully
        assert {p.act for p in report.pairs} == {"clip", "identity"}
        moved = report.as_dict()
        assert 0 < moved["channels_movable"] < moved["channels"]


def test_relu6_rescaling_stays_exact_where_the_clip_acts(tmp_path, splits, monkeypatch):
    from compressor.quant import equalize as equalize_module

    model = _mobilenet_onnx(tmp_path)
    equalized, report = equalize(model)
    assert sum(report.movable[p.first] for p in report.pairs if p.act == "clip") > 0
    x = 8 * PP(splits.validation.images[:50]).numpy()  # large inputs: many channels saturate at 6
    clips = [n.output[0] for n in model.graph.node if n.op_type == "Clip"]
    saturated = np.mean([np.mean(v == 6.0) for v in run_intermediates(intermediate_session(model, clips), x, clips)
                         .values()])
    assert saturated > 0.01
    ref = _logits(model, x)
    assert np.abs(_logits(equalized, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    # The bound is what keeps it exact: moving every channel behind a ReLU6 changes the network.
    monkeypatch.setattr(equalize_module, "output_upper_bound", lambda w, b, low, high: np.full(len(b), -np.inf))
    naive, _ = equalize_module.equalize(model)
    assert np.abs(_logits(naive, x) - ref).max() > 1e-3 * np.abs(ref).max()


def _quantization_mse(x: np.ndarray, lo: float, hi: float) -> float:
    """Real 8-bit quantize-dequantize error of samples ``x`` on the range [lo, hi] (0 kept exact)."""
    scale = (hi - lo) / 255
    zero = np.round(-lo / scale)
    q = np.clip(np.round(x / scale) + zero, 0, 255)
    return float(np.mean(((q - zero) * scale - x) ** 2))


def test_mse_range_minimises_the_real_quantization_error():
    rng = np.random.default_rng(0)
    gauss = rng.normal(size=400_000).astype(np.float32)
    gauss[:4] = [25.0, -30.0, 28.0, 40.0]
    cases = {"gauss+outliers": gauss, "uniform": rng.uniform(-3, 3, 400_000).astype(np.float32),
             "relu": np.maximum(rng.normal(size=400_000), 0).astype(np.float32)}
    for name, x in cases.items():
        s = TensorStats.first(x)
        lo, hi = tensor_range(s, "mse")
        grid = [(max(s.min, -t), min(s.max, t)) for t in np.linspace(0.05, 1, 60) * max(-s.min, s.max)]
        best = min(_quantization_mse(x, *r) for r in grid)
        assert _quantization_mse(x, lo, hi) <= 1.05 * best, name
        if name == "gauss+outliers":
            assert hi < 0.6 * s.max and _quantization_mse(x, lo, hi) < 0.7 * _quantization_mse(x, s.min, s.max)
        if name == "uniform":
            assert hi == pytest.approx(s.max, rel=0.02) and lo == pytest.approx(s.min, rel=0.02)


def test_adaround_rounds_within_one_step_and_reconstructs_better(resnet_onnx, splits):
    node = next(n for n in resnet_onnx.graph.node if n.name == "/layer1/layer1.0/conv1/Conv")
    _, inits = _weights(resnet_onnx)
    w, b = inits[node.input[1]], inits[node.input[2]]
    x = {}
    for part, images in (("cal", splits.calibration.images[:64]), ("val", splits.validation.images[:64])):
        out = run_intermediates(intermediate_session(resnet_onnx, [node.input[0], node.output[0]]),
                                PP(images).numpy(), [node.input[0], node.output[0]])
        y = torch.from_numpy(out[node.output[0]])
        x[part] = (torch.from_numpy(out[node.input[0]]), torch.relu(y), y)
    scale = torch.from_numpy(np.abs(w).max() / 127 * np.ones((1, 1, 1, 1), np.float32))  # per-tensor grid
    wt = torch.from_numpy(w.copy())
    layer = weights.torch_layer(node, b)
    image, pos = weights.sample_columns(tuple(x["cal"][2].shape), 8192, torch.Generator().manual_seed(0))
    cols_layer, xc = weights.column_problem(node, b, w.shape, x["cal"][0], image, pos)
    yc = weights.outputs_at(x["cal"][2], image, pos)
    q = adaround(wt, scale, -127, 127, cols_layer, torch.relu, xc, torch.relu(yc),
                 AdaRoundSettings(iterations=150, batch=1024))
    nearest = torch.round(wt / scale)
    assert (q - nearest).abs().max() <= 1 and (q != nearest).any()
    assert torch.equal(q, torch.round(q))
    for part in ("cal", "val"):
        err = {k: reconstruction_error(layer, torch.relu, v * scale, *x[part][:2]) for k, v in (("ada", q), ("near", nearest))}
        assert err["ada"] < err["near"], (part, err)


def test_weight_loop_writes_adaround_and_bias_correction_into_the_qdq_model(problem, splits):
    cfg = QuantConfig(1000, "max", "asymmetric", "per_tensor", "int8", adaround=True, bias_correction=True)
    plain = problem.build(QuantConfig(1000, "max", "asymmetric", "per_tensor", "int8"))
    qdq = problem.build(cfg)
    table = problem.weight_table(cfg)
    grids_plain, grids = weights.read_grids(plain), weights.read_grids(qdq)
    floats = {n.name for n in problem.float_model.graph.node}
    assert set(table.layers) == set(grids) & floats and len(table.layers) == 20
    for name, entry in table.layers.items():
        np.testing.assert_array_equal(grids[name].scale, grids_plain[name].scale)  # same grid, other rounding
        sl = tuple(slice(0, d) for d in entry.q.shape)
        np.testing.assert_array_equal(grids[name].q[sl], entry.q)
        assert np.abs(entry.q.astype(int) - grids_plain[name].q[sl].astype(int)).max() <= 1
        assert entry.bias_delta is not None and entry.bias_delta.shape == (entry.q.shape[0],)
    assert table.summary()["adaround_better"] >= 16  # even 40 steps beat nearest rounding on most layers
    # Still fully integer on ORT-CPU, equalized too: the same kernels as the plain emission.
    everything = problem.build(QuantConfig(1000, "max", "asymmetric", "per_tensor", "int8", cle=True, adaround=True,
                                           bias_correction=True))
    assert _optimized_ops(everything) == _optimized_ops(plain)
    # Same weight key, other activation settings: the table is reused, not recomputed.
    other = QuantConfig(1, "entropy", "symmetric_uint8", "per_tensor", "int8", adaround=True, bias_correction=True)
    problem.build(other)
    assert problem.weight_table(other) is table


def _optimized_ops(model: onnx.ModelProto) -> dict[str, int]:
    import collections
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(tmp) / "o.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return dict(collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node))


def _channel_mean_errors(float_model, qdq, x) -> dict[str, float]:
    """Per weighted layer: mean over channels of |E[y] − E[ŷ]|, QDQ model against float, pre-activation."""
    fnodes = {n.name: n for n in float_model.graph.node if n.op_type == "Conv"}
    pairs = [(n.name, fnodes[n.name].output[0], n.output[0]) for n in qdq.graph.node if n.name in fnodes]
    fv = run_intermediates(intermediate_session(float_model, [p[1] for p in pairs]), x, [p[1] for p in pairs])
    qv = run_intermediates(intermediate_session(qdq, [p[2] for p in pairs]), x, [p[2] for p in pairs])
    return {name: float(np.abs((fv[f] - qv[q]).mean(axis=(0, 2, 3))).mean()) for name, f, q in pairs}


def test_bias_correction_shrinks_the_mean_output_error_per_channel(problem, resnet_onnx, splits):
    base = QuantConfig(1000, "max", "asymmetric", "per_tensor", "int8")
    corrected = QuantConfig(1000, "max", "asymmetric", "per_tensor", "int8", bias_correction=True)
    x = PP(splits.calibration.images[:64]).numpy()  # the images the correction was computed on
    before = _channel_mean_errors(resnet_onnx, problem.build(base), x)
    after = _channel_mean_errors(resnet_onnx, problem.build(corrected), x)
    assert sum(after.values()) < 0.5 * sum(before.values())
    assert sum(after[k] < before[k] for k in before) >= 0.8 * len(before)
    held_out = PP(splits.validation.images[:200]).numpy()
    assert sum(_channel_mean_errors(resnet_onnx, problem.build(corrected), held_out).values()) < \
        sum(_channel_mean_errors(resnet_onnx, problem.build(base), held_out).values())


def _check_weight_grid(qdq: onnx.ModelProto, floats: dict, qmax: int, power_of_two: bool = False) -> int:
    """Every learned weight is its float weight rounded once to nearest on a max-range ±qmax grid (or that scale
    rounded up to 2^k), emission padding stays zero, and every int32 bias is its float bias on input scale x weight
    scale, within the half step ORT's own int32 rounding adds (a step more under power-of-two scales, which round
    activation scales after the weights). Returns how many weights it checked."""
    producers = {o: n for n in qdq.graph.node for o in n.output}
    _, inits = _weights(qdq)
    checked = 0
    for conv in (n for n in qdq.graph.node if n.op_type in ("Conv", "Gemm")):
        wdq = producers.get(conv.input[1])
        if wdq is None or not wdq.input[0].endswith("_quantized"):
            continue
        q, s = inits[wdq.input[0]].astype(np.float64), inits[wdq.input[1]]
        w = floats[wdq.input[0].removesuffix("_quantized")]
        lead = tuple(slice(0, d) for d in w.shape)  # the emission pads the stem's input channels with zeros
        shape = (-1,) + (1,) * (w.ndim - 1) if s.ndim else ()
        per_row = np.abs(w).reshape(len(w), -1).max(1) if s.ndim else np.abs(w).max()
        expected = np.float32(per_row / qmax)
        if power_of_two:
            expected = np.exp2(np.ceil(np.log2(expected)))
            assert np.all(np.abs(q).max() <= qmax)
        else:
            assert np.abs(q).max() == qmax
        np.testing.assert_allclose(s[: len(w)] if s.ndim else s, expected, rtol=1e-6)
        np.testing.assert_array_equal(q[lead], np.clip(np.round(w / s[: len(w)].reshape(shape) if s.ndim else w / s), -qmax, qmax))
        assert np.abs(q).sum() == np.abs(q[lead]).sum()
        if len(conv.input) > 2 and conv.input[2] in producers:  # TensorRT keeps biases float
            bdq, xdq = producers[conv.input[2]], producers[conv.input[0]]
            sb = inits[bdq.input[1]]
            np.testing.assert_allclose(sb, inits[xdq.input[1]] * s, rtol=1e-6)
            b = floats[bdq.input[0].removesuffix("_quantized")]
            steps = 1.05 if power_of_two else 0.55  # power_of_two_scales requantizes the bias once more
            assert np.all(np.abs(inits[bdq.input[0]][: len(b)] * sb[: len(b)] - b) <= steps * sb[: len(b)])
        checked += 1
    return checked


def test_four_bit_weights_sit_on_their_grid_and_the_toolbox_recovers_what_they_cost(resnet_onnx, splits, problem):
    """The harder space of the search benchmark (issue 20): weights on a 4-bit grid stored in int8. Each learned
    weight is the nearest 4-bit value of its float weight, per tensor, per channel and under power-of-two scales,
    for ONNX Runtime and TensorRT; biases follow their new scales; the emission's exact shortcut selections stay
    exact; and the plain grid costs accuracy that AdaRound and bias correction win back, as their papers report at
    4 bits."""
    w4 = QuantProblem(resnet_onnx, splits.calibration, splits.validation, PP, weight_bits=4,
                      adaround=AdaRoundSettings(iterations=40, columns=4096, batch=512), weight_images=64)
    _, floats = _weights(resnet_onnx)
    base = QuantConfig(1000, "max", "asymmetric", "per_tensor", "int8")
    qdq = w4.build(base)
    assert _check_weight_grid(qdq, floats, 7) == 20
    assert _check_weight_grid(w4.build(dataclasses.replace(base, granularity="per_channel")), floats, 7) == 20
    pow2 = w4.build(dataclasses.replace(base, scheme="power_of_two", granularity="per_channel"))
    assert _check_weight_grid(pow2, floats, 7, power_of_two=True) == 20
    trt = quantize(w4.float_model, w4.calibrator.ranges(1000, "max"),
                   QuantConfig(1000, "max", "symmetric", "per_channel", "int8"), "tensorrt", weight_bits=4)
    assert _check_weight_grid(trt, floats, 7) == 20
    inits = _weights(qdq)[1]
    selections = [k for k, v in inits.items() if k.endswith("_weight") and v.dtype == np.int8]
    assert len(selections) == 2  # ResNet-20's two option-A shortcuts: shifted identities, scale 1, one 1 per input
    for name in selections:
        assert set(np.unique(inits[name])) == {0, 1} and np.all(inits[name].sum(axis=0) == 1), name
        assert inits[f"{name}_scale"] == 1.0
    table = w4.weight_table(dataclasses.replace(base, adaround=True))
    assert all(np.abs(e.q.astype(int)).max() <= 7 for e in table.layers.values())
    assert table.summary()["adaround_better"] >= 18
    fp32, w8 = top1_onnx(resnet_onnx, splits.validation, PP), problem.evaluate(base)
    plain = w4.evaluate(base)
    assert plain <= min(fp32, w8) - 5, (plain, fp32, w8)  # a 4-bit per-tensor grid costs accuracy here
    for technique in ("adaround", "bias_correction"):
        assert w4.evaluate(dataclasses.replace(base, **{technique: True})) >= plain + 5, technique
    with pytest.raises(ValueError, match="weight_bits=9"):
        QuantProblem(resnet_onnx, splits.calibration, splits.validation, PP, weight_bits=9)


def test_statistics_once_per_graph_and_size(problem):
    runs = problem.calibration_runs
    for cfg in (QuantConfig(1000, "mse", "asymmetric", "per_channel", "int8", cle=True),
                QuantConfig(1000, "entropy", "symmetric_uint8", "per_tensor", "int8", cle=True),
                QuantConfig(1000, "percentile", "asymmetric", "per_channel", "int8", cle=False)):
        problem.evaluate(cfg)
    assert problem.calibration_runs <= runs + 2  # at most the equalized graph's table and the plain one's
    again = problem.calibration_runs
    problem.evaluate(QuantConfig(1000, "max", "power_of_two", "per_channel", "int8", cle=True))
    assert problem.calibration_runs == again


def test_keep_float_patterns_match_module_names(resnet_onnx, splits):
    assert module_name("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert module_name("/linear/Gemm") == "linear"
    nodes = match_layers(resnet_onnx, ["layer3.2.*", "linear"])
    assert "/layer3/layer3.2/conv2/Conv" in nodes and "/linear/Gemm" in nodes
    assert all(module_name(n).startswith("layer3.2") or n == "/linear/Gemm" for n in nodes)
    with pytest.raises(CompressorError, match="'layer9.*' matches no layer; modules are named like"):
        match_layers(resnet_onnx, ["layer9.*"])
    keep = match_layers(resnet_onnx, ["linear", "conv1"])
    problem = QuantProblem(resnet_onnx, splits.calibration.subset(np.arange(100)), splits.validation, PP,
                           keep_float=keep)
    qdq = problem.build(QuantConfig(1000, "max", "asymmetric", "per_channel", "int8"))
    grids = set(weights.read_grids(qdq)) & {n.name for n in resnet_onnx.graph.node}  # not the shortcut convs
    assert "/linear/Gemm" not in grids and "/conv1/Conv" not in grids and len(grids) == 18


def test_accuracy_goal_sends_the_most_sensitive_layers_back_to_float(problem):
    cfg = QuantConfig(1, "max", "asymmetric", "per_tensor", "int8")
    start = problem.evaluate(cfg)
    assert accuracy_fallback(problem, cfg, start - 1.0, 5).nodes == []  # goal already met: nothing changes
    unreachable = accuracy_fallback(problem, cfg, 101.0, 3)
    ranked = sorted(problem.sensitivity(cfg).items(), key=lambda kv: -kv[1])
    assert unreachable.nodes == [n for n, _ in ranked[:3]] and not unreachable.met
    assert len(unreachable.steps) == 3 and unreachable.as_dict()["layers"][0] == module_name(ranked[0][0])
    assert unreachable.nodes[0] not in weights.read_grids(problem.build(cfg, tuple(unreachable.nodes)))
    # A goal between the start and a step's measurement stops there.
    if unreachable.steps[0] > start:
        reached = accuracy_fallback(problem, cfg, unreachable.steps[0], 3)
        assert reached.met and reached.nodes == unreachable.nodes[:1]


def test_report_lists_the_layers_kept_in_float():
    from compressor.pipeline.report import Report, StageRecord, render_markdown

    goal = {"goal_val_top1": 90.0, "start_val_top1": 88.5, "met": True, "layers": ["layer3.2.conv2"],
            "nodes": ["/layer3/layer3.2/conv2/Conv"], "val_top1_per_step": [90.2]}
    stage = StageRecord("03_quantize", "pass", details={"float_layers": ["linear", "layer3.2.conv2"],
                                                        "accuracy_goal": goal})
    text = render_markdown(Report(stages=[stage]))
    assert "Layers 03_quantize kept in float: `linear`, `layer3.2.conv2`" in text
    assert "(validation top-1 ≥ 90.00): met after 1 layer(s) back to float (88.50 → 90.20)" in text


def test_space_and_database_cover_the_toolbox_knobs(tmp_path):
    space = config_space("ort-cpu", 500)
    assert len(space) == 2 * 4 * 4 * 2 * 2 * 8 and len(set(space)) == len(space)
    assert {c.clipping for c in space} == {"max", "entropy", "percentile", "mse"}
    only = config_space("ort-cpu", 500, {"adaround": (False,), "cle": (True,)})
    assert all(not c.adaround and c.cle for c in only) and len(only) == len(space) // 4
    a = QuantConfig(1000, "mse", "asymmetric", "per_tensor", "int8", cle=True, adaround=True)
    assert a.key() == "c1000-mse-asymmetric-per_tensor-cle-ar-int8"
    assert features(a, dict.fromkeys(("nodes", "conv", "bn", "act", "skip", "depthwise", "pointwise", "size_mb"),
                                     1.0))[-14:-8] == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    # A database from before the toolbox (records without the new knobs) and a new one load side by side.
    desc = {"nodes": 50.0, "conv": 19.0, "bn": 19.0, "act": 19.0, "skip": 9.0, "depthwise": 0.0, "pointwise": 0.0,
            "size_mb": 1.1}
    old = {"model": "old", "descriptors": desc, "fp32_val_top1": 90.0, "validation_images": 1, "calibration_images": 1,
           "results": [{"config": {"calibration": 1000, "clipping": "max", "scheme": "asymmetric",
                                   "granularity": "per_tensor", "precision": "int8"}, "val_top1": 89.0}]}
    new = {**old, "model": "new", "descriptors": {**desc, "conv": 30.0},
           "results": [{"config": a.as_dict(), "val_top1": 89.5}]}
    path = tmp_path / "db.json"
    path.write_text(json.dumps({"models": [old, new]}))
    records = load_db(path)
    assert records[0].config == QuantConfig(1000, "max", "asymmetric", "per_tensor", "int8")  # knobs were off
    assert records[1].config == a
    assert len({len(features(r.config, r.descriptors)) for r in records}) == 1
    tuner = XGBoostTuner({**desc, "conv": 40.0}, 91.0, records)
    assert tuner.propose({}, space, random.Random(0)) in space


def test_database_build_keeps_narrowed_weight_grids_out(tmp_path):
    """4-bit-weight grids are a benchmark space; the pass searches int8 weights, so its database must not learn from
    them (build_quantune_db skips them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_quantune_db", ROOT / "benchmarks" / "build_quantune_db.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    desc = dict.fromkeys(("nodes", "conv", "bn", "act", "skip", "depthwise", "pointwise", "size_mb"), 1.0)
    row = {"config": QuantConfig().as_dict(), "val_top1": 90.0}
    for name, bits in (("a", 8), ("b", None), ("a_w4", 4)):
        grid = {"model": name, "descriptors": desc, "fp32_val_top1": 91.0, "validation_images": 10,
                "calibration_images": 10, "results": [row], "complete": True}
        if bits is not None:
            grid["weight_bits"] = bits
        (tmp_path / f"grid_{name}.json").write_text(json.dumps(grid))
    db = builder.build(tmp_path, tmp_path / "db.json")
    assert [m["model"] for m in db["models"]] == ["a", "b"]
    assert [r.model for r in load_db(tmp_path / "db.json")] == ["a", "b"]
