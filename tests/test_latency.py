"""Latency-driven compression: the latency table (cache, resume, fingerprint), whole-model prediction, HALP's
knapsack, pruning to a speed-up on the demo ResNet-20, N2N's latency reward, the report's headline and the
``profile`` command. Latencies come from the analytic ``StairTarget`` of conftest.py (timing is not tested here);
the single-layer ONNX builders are run for real."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compressor.core.data import Preprocess
from compressor.core.metrics import count_macs
from compressor.errors import CompressorError
from compressor.graph.dependency import DependencyGraph
from compressor.n2n.layers import Candidate, Measurement, build_student, describe_layers
from compressor.n2n.reward import RewardFunction
from compressor.n2n.search import N2NConfig, N2NSearch
from compressor.passes.base import Context
from compressor.passes.prune import Prune, PruneConfig
from compressor.pipeline.gate import evaluate_gate
from compressor.pipeline.recipe import BudgetSection
from compressor.pipeline.report import Report, StageRecord, headline, render_markdown
from compressor.pruning.knapsack import knapsack, profile_shapes
from compressor.runtime.latency import Latency, paired_speedup
from compressor.runtime.latency_model import EMPTY, LatencyModel, LatencyTable, describe
from compressor.runtime.latency_targets import LayerShape, OrtCpuTarget
from tests.conftest import StairTarget

SHAPE = (3, 32, 32)
SHAPES = [LayerShape("conv", 16, w, 32, 32, 3, 1, 1, act="relu") for w in (4, 8, 12, 16)] + [
    LayerShape("add", 16, 16, 32, 32, act="relu"), LayerShape("linear", 64, 10)]


def _small_ctx(splits, teacher, tmp_path) -> Context:
    small = dataclasses.replace(splits, validation=splits.validation.subset(np.arange(100)),
                                reference=splits.reference.subset(np.arange(0, len(splits.reference), 2)))
    return Context(small, teacher, Preprocess(), SHAPE, tmp_path, progress=False)


def test_table_is_cached_resumes_and_is_keyed_by_machine(tmp_path):
    target = StairTarget()
    target.fail_after = 3
    table = LatencyTable(target, tmp_path / "t.json")
    with pytest.raises(KeyboardInterrupt):
        table.measure(SHAPES, "int8", [1, 64])
    again = LatencyTable(StairTarget(), tmp_path / "t.json")  # a new process reading the file: 3 entries kept
    assert len(again.entries) == 3 * 2
    assert again.measure(SHAPES, "int8", [1, 64]) == len(SHAPES) + 1 - 3  # only what the killed run missed
    assert again.measure(SHAPES, "int8", [1, 64]) == 0 and again.target.layers_timed == len(SHAPES) + 1 - 3
    assert again.get(SHAPES[0], "int8", 64) == pytest.approx(StairTarget.EMPTY_MS + StairTarget.own_ms(SHAPES[0], "int8", 64))
    assert again.measure(SHAPES[:1], "fp32", [64]) == 2  # another precision is another entry (plus its empty call)
    # Another thread count is another machine state: another file, and a file of another fingerprint is not read.
    assert LatencyTable(StairTarget(threads=1)).path != LatencyTable(StairTarget(threads=2)).path
    assert LatencyTable(StairTarget(threads=1), tmp_path / "t.json").entries == {}
    raw = json.loads((tmp_path / "t.json").read_text())
    assert raw["fingerprint"] == {"target": "stair", "threads": "2"} and len(raw["entries"]) == 2 * 7 + 2


def test_prediction_is_the_sum_of_entries_plus_the_calibrated_overhead_per_layer(teacher, tmp_path):
    target = StairTarget()
    lm = LatencyModel(LatencyTable(target, tmp_path / "t.json"), "int8", 64)
    shapes = [layer.shape for layer in describe(teacher, SHAPE)]
    assert len(shapes) == 19 + 9 + 2 + 2  # convs, adds, two shortcuts, pool and linear of ResNet-20
    predicted = lm.predict(teacher, SHAPE)
    empty = lm.table.get(EMPTY, "int8", 64)
    assert predicted == pytest.approx(empty + sum(lm.table.get(s, "int8", 64) - empty for s in shapes))
    measured = lm.calibrate(teacher, SHAPE)
    assert measured == pytest.approx(target.time_model(teacher, SHAPE, "int8", [64])[64])
    assert lm.overhead == pytest.approx(StairTarget.LAYER_EXTRA_MS) and lm.scale == 1
    # Pruned variants are predicted from the same entries and overhead, a student with fewer layers paying less of
    # it (a constant offset would over-predict it by 0.003 ms per removed layer); the calibration is cached per
    # architecture.
    pruned = DependencyGraph(teacher, SHAPE)
    variant = pruned.prune([g for g in pruned.groups() if not g.residual][::3], copy.deepcopy(teacher))
    table = describe_layers(teacher, input_shape=SHAPE)
    units = sorted({layer.unit for layer in table.layers if layer.decides})
    shallow = build_student(teacher, table, Candidate.make(units[:5]), SHAPE)
    other = LatencyModel(LatencyTable(target, tmp_path / "t.json"), "int8", 64)
    calls = target.models_timed
    other.calibrate(teacher, SHAPE)
    assert target.models_timed == calls and other.overhead == pytest.approx(lm.overhead)
    for v in (variant, shallow):
        assert other.predict(v, SHAPE) == pytest.approx(target.time_model(v, SHAPE, "int8", [64])[64])



class FusingTarget(StairTarget):
    """A runtime that fuses across layers: a whole model costs a fixed share of its layers' summed own costs."""

    SHARE = 0.4

    def time_model(self, model, input_shape, precision, batches):
        shapes = [layer.shape for layer in describe(model, tuple(input_shape))]
        return {b: self.EMPTY_MS + self.SHARE * sum(self.own_ms(s, precision, b) for s in shapes) for b in batches}


def test_a_model_faster_than_its_layer_sum_is_calibrated_by_a_factor_not_a_negative_offset(teacher, tmp_path):
    """With a negative offset a student with half the blocks would be predicted near zero (or below); the factor
    predicts a fusing runtime's block-removed and channel-pruned variants exactly."""
    target = FusingTarget()
    lm = LatencyModel(LatencyTable(target, tmp_path / "t.json"), "int8", 64)
    measured = lm.calibrate(teacher, SHAPE)
    assert measured == pytest.approx(target.time_model(teacher, SHAPE, "int8", [64])[64])
    assert lm.overhead == 0 and lm.scale == pytest.approx(FusingTarget.SHARE)
    table = describe_layers(teacher, input_shape=SHAPE)
    units = sorted({layer.unit for layer in table.layers if layer.decides})
    shallow = build_student(teacher, table, Candidate.make(units[: len(units) - 1]), SHAPE)
    pruned = DependencyGraph(teacher, SHAPE)
    narrow = pruned.prune([g for g in pruned.groups() if not g.residual][::3], copy.deepcopy(teacher))
    for variant in (shallow, narrow):
        assert lm.predict(variant, SHAPE) == pytest.approx(target.time_model(variant, SHAPE, "int8", [64])[64])
    assert 0 < lm.predict(shallow, SHAPE) < measured / 4

def _relevance_only(values, costs, budget):
    """Latency-blind baseline: per layer, options are 'keep the top j'; drop the least valuable single channel
    (marginal value) globally until the summed cost fits."""
    kept = [len(v) - 1 for v in values]  # option index = kept count (options 0..n)
    while sum(c[k] for c, k in zip(costs, kept)) > budget:
        marginal = [(v[k] - v[k - 1], i) for i, (v, k) in enumerate(zip(values, kept)) if k > 0]
        _, i = min(marginal)
        kept[i] -= 1
    return kept


def test_knapsack_keeps_the_most_relevance_per_latency():
    # Layer A: linear latency, three weak channels. Layer B: the least relevant channels, but on a staircase that
    # only saves latency in steps of four. Relevance-only ranking removes B's channels first and must go a whole
    # step down (4 x 0.5 lost); the knapsack removes A's three weak ones (3 x 0.55) for the same budget.
    a_scores, b_scores = [8, 7, 6, 5, 4, 0.55, 0.55, 0.55], [0.5] * 8
    values = [np.concatenate([[0], np.cumsum(a_scores)]), np.concatenate([[0], np.cumsum(b_scores)])]
    costs = [np.arange(9, dtype=float), 4.0 * np.ceil(np.arange(9) / 4)]
    budget = 8 + 8 - 3
    greedy = _relevance_only(values, costs, budget)
    picks = knapsack(values, [c for c in costs], budget)
    total = lambda k: sum(v[j] for v, j in zip(values, k))  # noqa: E731
    spent = lambda k: sum(c[j] for c, j in zip(costs, k))  # noqa: E731
    assert spent(picks) <= budget and spent(greedy) <= budget
    assert total(picks) > total(greedy) and picks == [5, 8]
    # And it is the optimum of small random instances (brute force), never worse than the greedy ranking.
    rng = np.random.default_rng(0)
    for _ in range(30):
        values = [np.concatenate([[0], np.cumsum(np.sort(rng.random(5))[::-1])]) for _ in range(3)]
        costs = [np.concatenate([[0], np.cumsum(rng.random(5))]) for _ in range(3)]
        budget = float(rng.uniform(0.3, 0.9)) * sum(c[-1] for c in costs)
        picks = knapsack(values, costs, budget)
        best = max(total(k) for k in itertools.product(range(6), repeat=3) if spent(k) <= budget)
        assert spent(picks) <= budget + 1e-9 and total(picks) == pytest.approx(best, rel=1e-3, abs=1e-3)
        assert total(picks) >= total(_relevance_only(values, costs, budget)) - 1e-9
    assert knapsack([np.array([1.0])], [np.array([2.0])], 1.0) is None


@pytest.mark.parametrize("criterion", ["lrp", "l1"])
def test_target_speedup_is_reached_on_the_predicted_model_with_widths_on_the_steps(
        criterion, teacher, demo_splits, tmp_path, stair_target):
    ctx = _small_ctx(demo_splits, teacher, tmp_path)
    config = PruneConfig(criterion=criterion, target_speedup=4.0, scope="inner", deploy_precision="int8")
    result = Prune(config).run(teacher, ctx)
    lat = result.metrics["latency"]
    fp32 = stair_target.time_model(teacher, SHAPE, "fp32", [64])[64]
    assert lat["baseline_fp32_ms"] == pytest.approx(fp32) and lat["budget_ms"] == pytest.approx(fp32 / 4.0)
    assert lat["reached"] and lat["predicted_speedup"] >= 4.0 and lat["predicted_speedup"] < 4.6
    # The analytic double is exactly additive, so the measured speed-up is the predicted one.
    assert lat["measured_speedup"] == pytest.approx(lat["predicted_speedup"], rel=1e-6)
    assert count_macs(result.model, SHAPE) < count_macs(teacher, SHAPE)
    # The staircase has steps of 8 channels: every pruned inner width sits on top of a step.
    inner = {n: w for n, w in result.metrics["widths"].items() if n.endswith("conv1") and n != "conv1"}
    assert any(w < 16 for w in inner.values()) and all(w % 8 == 0 for w in inner.values()), inner


def test_a_budget_the_deployed_precision_meets_prunes_nothing(teacher, demo_splits, tmp_path, stair_target, monkeypatch):
    """The double's INT8 runs 2.5x its FP32: asking 2x prunes nothing and skips the final fine-tune."""
    import compressor.pruning.prune as prune_module

    monkeypatch.setattr(prune_module, "distill", lambda *a, **k: pytest.fail("fine-tuned an unpruned model"))
    ctx = _small_ctx(demo_splits, teacher, tmp_path)
    result = Prune(PruneConfig(target_speedup=2.0, scope="inner", final_finetune_steps=50)).run(teacher, ctx)
    lat = result.metrics["latency"]
    assert result.metrics["removed_filters"] == 0 and lat["reached"] and lat["predicted_speedup"] >= 2.0
    assert count_macs(result.model, SHAPE) == count_macs(teacher, SHAPE)


def test_iterative_latency_schedule_lowers_the_prediction_step_by_step(teacher, demo_splits, tmp_path, stair_target):
    ctx = _small_ctx(demo_splits, teacher, tmp_path)
    config = PruneConfig(criterion="l1", target_speedup=4.0, scope="inner", schedule="iterative", step=0.5,
                         width_step=4)
    result = Prune(config).run(teacher, ctx)
    predicted = [s["predicted_ms"] for s in result.metrics["steps"]]
    assert len(predicted) == 3 and predicted[0] > predicted[1] > predicted[2]
    assert result.metrics["latency"]["reached"]
    assert all(w % 4 == 0 for w in result.metrics["widths"].values())


def test_knapsack_costs_on_a_fusing_runtime_are_in_predicted_milliseconds(teacher, tmp_path):
    """On a runtime calibrated by a factor (whole model 0.4x its layer sum) a removal saves only that share of
    the layer's own cost: the knapsack must count it so, in the budget's units. The double is exactly additive,
    so the first solution must already fit the budget, without the tightening loop (which, counting savings in
    table milliseconds, ran a ResNet-56 step meant to save 2.7 % of the latency down to the floors)."""
    from compressor.pruning.criteria import L1Criterion, group_scores
    from compressor.pruning.knapsack import LatencyPlanner, conv_widths
    from compressor.runtime.latency_model import removed_members, shape_after

    lm = LatencyModel(LatencyTable(FusingTarget(), tmp_path / "t.json"), "int8", 64)
    start = lm.calibrate(teacher, SHAPE)
    assert lm.scale == pytest.approx(FusingTarget.SHARE)
    groups = [g for g in DependencyGraph(teacher, SHAPE).groups() if not g.residual]
    scores = group_scores(groups, L1Criterion()(teacher))
    floors = {n: max(1, w // 4) for n, w in conv_widths(teacher).items()}
    layers = describe(teacher, SHAPE)
    plans = LatencyPlanner(lm, 1.0).options(teacher, groups, scores, floors, layers)
    budget = start * 0.9
    picks = knapsack([p.values for p in plans], [p.costs for p in plans], budget - start)
    chosen = [g for p, j in zip(plans, picks) for g in p.removed(j)]
    after = lm.predict_shapes([shape_after(layer, removed_members(chosen)) for layer in layers])
    assert budget * 0.97 < after <= budget + 1e-9, (after, budget)


def test_n2n_reward_and_limits_on_latency(teacher, demo_splits, tmp_path, stair_target):
    f = RewardFunction(80.0, 1000, 5000, size_measure="latency", teacher_latency_ms=10.0, baseline_ms=20.0,
                       min_speedup=4.0)
    fast, slow = Measurement(True, 80.0, 900, 4000, latency_ms=4.0), Measurement(True, 80.0, 100, 100, latency_ms=6.0)
    assert f(fast, 0) == pytest.approx(0.6 * 1.4) and f.within_limits(fast)
    assert not f.within_limits(slow) and f(slow, 15) == -1.0  # 20 / 6 < 4: over the limit after the horizon
    config = N2NConfig(removal_iterations=1, shrink_iterations=0, rollouts=2, student_steps=1, student_batch_size=16,
                       subset_size=64, final_steps=0, tune_mode=False, size_measure="latency")
    search = N2NSearch(teacher, _small_ctx(demo_splits, teacher, tmp_path), config)
    result = search.run()
    parent_ms = search.reward.teacher_latency_ms
    assert parent_ms == pytest.approx(stair_target.time_model(teacher, SHAPE, "int8", [64])[64])
    for m in search.measurements.values():
        assert 0 < m.latency_ms <= parent_ms
    best = result.details["best"]
    assert best["predicted_ms"] == pytest.approx(search.latency.predict(result.model, SHAPE))


def _stage(name, kind, b1, tp, top1=90.0, path=None):
    return StageRecord(name, kind, top1=top1, delta_top1=top1 - 91.0, latency_b1_p50_ms=b1, throughput_b64_img_s=tp,
                       onnx_path=path)


def test_report_headline_and_slower_stage_flag():
    report = Report(stages=[
        _stage("teacher", "teacher", 0.30, 4000, 91.0, "stages/00_teacher.onnx"),
        _stage("01_prune", "pass", 0.54, 5000),  # slower than the teacher at batch 1: flagged
        _stage("02_fold_bn", "pass", 0.57, 4800),  # within the noise of its input: not flagged
        _stage("03_quantize", "pass", 0.15, 12000, 90.5),
        _stage("export_onnx", "export", 0.53, 5050, 90.6, "model.onnx"),
        _stage("export_onnx_int8", "export", 0.15, 12000, 90.5, "model_int8.onnx"),
    ], deployed="model_int8.onnx")
    h = headline(report)
    assert h["deployed"] == "model_int8.onnx" and h["delta_top1"] == pytest.approx(-0.5)
    assert h["vs_teacher"]["batch1_speedup"] == pytest.approx(2.0) and h["vs_teacher"]["batch64_speedup"] == pytest.approx(3.0)
    assert h["vs_teacher_ort_fp32"] == h["vs_teacher"]  # on ort-cpu the teacher's figures are ORT FP32
    assert [s["stage"] for s in h["slower_stages"]] == ["01_prune"] and h["slower_stages"][0]["input"] == "teacher"
    report.headline = h
    md = render_markdown(report)
    assert md.index("## Headline (ort-cpu)") < md.index("`model_int8.onnx` (deployed): test top-1 90.50 % (-0.50 pt")
    assert md.index("## Headline (ort-cpu)") < md.index("| stage |") < md.index("\n\nDeployed artifact")
    assert "| the teacher on ort-cpu | 2.00× | 3.00× |" in md and "**Slower than its input:** 01_prune" in md
    assert Report.from_dict(json.loads(json.dumps(report.to_dict()))).headline == h
    # Another target reads its own figures; the common baseline stays the teacher's ORT FP32.
    report.recipe = {"targets": ["ort-cpu", "openvino-cpu"]}
    for s in report.stages:
        s.latency = {"openvino-cpu": {"p50_b1_ms": s.latency_b1_p50_ms / 2, "img_s_b64": s.throughput_b64_img_s * 2}}
    ov = headline(report, "openvino-cpu")
    assert ov["vs_teacher"]["batch64_speedup"] == pytest.approx(3.0)
    assert ov["vs_teacher_ort_fp32"]["batch64_speedup"] == pytest.approx(6.0)


def test_a_slower_stage_is_flagged_only_when_paired_rounds_confirm_it():
    """The rows say 01_prune is slower than the teacher (timed minutes apart); the flag rests on the two timed
    in paired rounds, which only suspects get."""
    report = Report(stages=[
        _stage("teacher", "teacher", 0.30, 4000, 91.0, "stages/00_teacher.onnx"),
        _stage("01_prune", "pass", 0.54, 5000, path="stages/01_prune.onnx"),
        _stage("02_fold_bn", "pass", 0.57, 4800, path="stages/02_fold_bn.onnx"),
        _stage("export_onnx", "export", 0.53, 5050, 90.6, "model.onnx"),
    ], deployed="model.onnx")
    calls = []

    def time_pair(factor):
        def timed(before, stage):
            calls.append((before.stage, stage.stage))
            base = Latency(0.3, 4000, 64, (4000,) * 4, (0.30,) * 4)
            return paired_speedup(base, Latency(0.3 / factor, 4000 * factor, 64, (4000 * factor,) * 4, (0.30 / factor,) * 4))
        return timed

    h = headline(report, time_pair=time_pair(1.3))  # paired: 01_prune is 1.3x faster than the teacher
    assert h["slower_stages"] == [] and calls == [("teacher", "01_prune")]
    calls.clear()
    h = headline(report, time_pair=time_pair(0.8))  # paired: 0.8x, slower beyond the 10 % tolerance
    assert calls == [("teacher", "01_prune")]
    assert h["slower_stages"] == [{"stage": "01_prune", "input": "teacher", "batch1_speedup": 0.8,
                                   "batch64_speedup": 0.8, "paired_rounds": 4}]
    report.headline = h
    assert "(speed-up 0.80× at batch 1, 0.80× at batch 64, 4 paired rounds)" in render_markdown(report)

    def mixed(before, stage):  # slower in 3 rounds of 5 (the median), as fast in 2: not beyond noise
        base = Latency(0.3, 4000, 64, (4000,) * 5, (0.30,) * 5)
        return paired_speedup(base, Latency(0.3, 4000, 64, (3200, 3200, 3200, 4000, 4000), (0.375, 0.375, 0.375, 0.3, 0.3)))

    h = headline(report, time_pair=mixed)
    assert h["slower_stages"] == []

    def slower_at_64(before, stage):  # as fast at batch 1, 0.8x throughput in every round: flagged
        base = Latency(0.3, 4000, 64, (4000,) * 5, (0.30,) * 5)
        return paired_speedup(base, Latency(0.3, 3200, 64, (3200,) * 5, (0.30,) * 5))

    h = headline(report, time_pair=slower_at_64)
    assert [(s["stage"], s["batch1_speedup"], s["batch64_speedup"]) for s in h["slower_stages"]] == [("01_prune", 1.0, 0.8)]


def test_headline_and_gate_read_paired_rounds_not_stage_rows():
    """Stage rows timed minutes apart on a host that changed speed in between read 1.1x at batch 1; the paired
    rounds, where the host's slow round slowed both models, read 2x, and the gate reads that."""
    report = Report(stages=[
        _stage("teacher", "teacher", 0.30, 4000, 91.0, "stages/00_teacher.onnx"),
        _stage("export_onnx_int8", "export", 0.27, 4500, 90.5, "model_int8.onnx"),
    ], deployed="model_int8.onnx")
    budget = BudgetSection(min_speedup=1.5)
    unpaired = evaluate_gate(report, budget)[0]
    assert not unpaired.passed and unpaired.actual == pytest.approx(0.30 / 0.27)
    assert unpaired.limit == "min_speedup (x, p50 batch 1)" and unpaired.measured == "stage rows on ort-cpu, unpaired"
    # Round 3 ran in the host's slow state: both models took longer, their ratio did not change much.
    teacher = Latency(0.3, 4000, 64, (4000, 4100, 2000, 3900, 4000), (0.30, 0.31, 0.60, 0.30, 0.29))
    deployed = Latency(0.15, 12000, 64, (12000, 11800, 6500, 12500, 12000), (0.15, 0.15, 0.33, 0.16, 0.14))
    paired = paired_speedup(teacher, deployed)
    assert paired["batch1_speedup"] == pytest.approx(2.0) and paired["rounds"] == 5
    assert paired["batch1_ratios"] == pytest.approx([2.0, 2.067, 1.818, 1.875, 2.071], abs=1e-3)  # in the rounds' order
    assert paired["batch1_trimmed"] == pytest.approx([1.875, 2.067], abs=1e-3)  # 0.30/0.16 .. 0.31/0.15
    assert paired["throughput_speedup"] == pytest.approx(3.0) and paired["throughput_trimmed"] == pytest.approx([3.0, 3.205], abs=1e-3)
    assert paired_speedup(teacher, Latency(0.15, 12000, 64)) is None  # rounds not kept: nothing to pair
    report.headline = headline(report, "ort-cpu", {"vs_teacher": paired, "vs_teacher_ort_fp32": paired})
    assert report.headline["paired_rounds"] == 5 and report.headline["vs_teacher"]["batch1_speedup"] == pytest.approx(2.0)
    assert report.headline["vs_teacher"]["batch64_speedup"] == pytest.approx(3.0)
    gate = evaluate_gate(report, budget)[0]
    assert gate.passed and gate.actual == pytest.approx(2.0) and gate.measured == "on ort-cpu, 5 paired rounds"
    md = render_markdown(report)
    assert "| the teacher on ort-cpu | 2.00× | 3.00× |" in md and "Timed in 5 paired rounds" in md and "1.88–2.07×" in md
    # The report round-trips through JSON and `compressor check` reads the same figure.
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert evaluate_gate(again, budget)[0].actual == pytest.approx(2.0)
    # The gate reads the headline's target: here OpenVINO, which the quantize pass chose for, not the first target.
    report.recipe = {"targets": ["ort-cpu", "openvino-cpu"]}
    on_ov = paired_speedup(teacher, Latency(0.1, 16000, 64, (16000,) * 5, (0.1,) * 5))
    report.headline = headline(report, "openvino-cpu", {"vs_teacher": on_ov, "vs_teacher_ort_fp32": paired})
    gate = evaluate_gate(report, budget)[0]
    assert gate.actual == pytest.approx(3.0) and gate.measured == "on openvino-cpu, 5 paired rounds"
    # A hand-edited headline is refused by name, not read as a speed-up (true is not 1.0; infinity passes nothing).
    for bad in ({"paired_rounds": 5, "vs_teacher": {"batch1_speedup": True}},
                {"paired_rounds": 5, "vs_teacher": {"batch1_speedup": float("inf")}},
                {"paired_rounds": "5", "vs_teacher": {"batch1_speedup": 2.0}}, {"paired_rounds": 5, "vs_teacher": [2.0]}):
        report.headline = bad
        with pytest.raises(CompressorError, match="headline is malformed"):
            evaluate_gate(report, budget)


def test_profile_times_the_widths_the_prune_pass_may_choose(cli, stair_target, teacher):
    shapes = profile_shapes(teacher, SHAPE, "inner", width_step=8)
    inner_couts = sorted({s.cout for s in shapes if s.kind == "conv" and s.cout not in (16, 32, 64)})
    assert inner_couts == [8, 24, 40, 48, 56]
    code, out, err = cli("profile", "--model", "cifar_resnet20", "--width-step", "8", "--batch", "1,64", "--quiet")
    assert code == 0, err
    assert f"{len(shapes)} layer shapes of cifar_resnet20" in out and f"{len(shapes) + 1} timed now" in out
    assert "overhead +0.0030 ms per layer" in out
    code, out, _ = cli("profile", "--model", "cifar_resnet20", "--width-step", "8", "--batch", "1,64", "--quiet")
    assert code == 0 and "0 timed now" in out
    code, _, err = cli("profile", "--model", "cifar_resnet20", "--target", "nowhere")
    assert code == 2 and "latency target 'nowhere' is not available" in err


def test_a_second_runtime_plugs_in_with_its_own_table(cli, stair_target, monkeypatch, tmp_path):
    """The hook OpenVINO's CPU runtime will use: an entry of TARGETS, with its own fingerprint and table."""
    from compressor.runtime import latency_targets

    other = StairTarget(tag="other-runtime")
    other.name = "openvino-cpu"
    monkeypatch.setitem(latency_targets.TARGETS, "openvino-cpu", lambda threads=2: other)
    code, out, err = cli("profile", "--model", "cifar_resnet20", "--target", "openvino-cpu", "--width-step", "16",
                         "--quiet")
    assert code == 0 and other.layers_timed > 0 and stair_target.layers_timed == 0, err
    assert "openvino-cpu-" in out.splitlines()[-1]  # the table file is named after the runtime


@pytest.mark.parametrize("shape", [
    LayerShape("conv", 3, 16, 32, 32, 3, 1, 1, act="relu"), LayerShape("conv", 13, 16, 16, 16, 3, 1, 1),
    LayerShape("conv", 16, 13, 16, 16, 3, 1, 1, act="relu"), LayerShape("conv", 13, 13, 16, 16, 3, 1, 1, 13, "relu6"),
    LayerShape("add", 16, 16, 32, 32, act="relu"), LayerShape("shortcut", 16, 32, 32, 32, stride=2),
    LayerShape("pool", 64, 64, 8, 8), LayerShape("linear", 64, 10)])
def test_single_layer_models_run_in_their_deployed_form(shape):
    target = OrtCpuTarget()
    for precision in ("fp32", "int8"):
        model = target.layer_model(shape, precision)
        onnx.checker.check_model(model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        types = {i.type for i in sess.get_inputs()}
        assert types == ({"tensor(uint8)"} if precision == "int8" else {"tensor(float)"})
        feeds = {i.name: np.zeros([2, *i.shape[1:]], np.uint8 if precision == "int8" else np.float32)
                 for i in sess.get_inputs()}
        (out,) = sess.run(None, feeds)
        # INT8 convs run widened to a multiple of four channels, as in an ort-cpu model (qdq.widen_producers).
        cout = -(-shape.cout // 4) * 4 if precision == "int8" and shape.kind == "conv" else shape.cout
        expected = (2, cout, *shape.out_hw) if shape.kind not in ("pool", "linear") else (2, cout)
        assert shape.kind != "conv" or not any(n.op_type == "Pad" for n in model.graph.node)
        assert out.shape == expected and (precision == "fp32" or out.dtype == np.uint8)


class FusedAddTarget(StairTarget):
    """A runtime that fuses every residual Add into a conv (as OpenVINO does): an add deploys as nothing, costs
    nothing and is not dispatched, so it pays no per-layer extra either."""

    @staticmethod
    def deployed_shape(shape, precision):
        return EMPTY if shape.kind == "add" else shape

    def time_model(self, model, input_shape, precision, batches):
        shapes = [layer.shape for layer in describe(model, tuple(input_shape)) if layer.shape.kind != "add"]
        return {b: self.EMPTY_MS + sum(self.LAYER_EXTRA_MS + self.own_ms(s, precision, b) for s in shapes)
                for b in batches}


def test_a_fused_add_costs_nothing_and_pays_no_overhead(teacher, tmp_path):
    target = FusedAddTarget()
    lm = LatencyModel(LatencyTable(target, tmp_path / "t.json"), "int8", 64)
    shapes = [layer.shape for layer in describe(teacher, SHAPE)]
    adds = [s for s in shapes if s.kind == "add"]
    assert len(adds) == 9 and lm.layer_ms(adds) == [0.0] * 9 and lm.count(shapes) == len(shapes) - 9
    assert all(lm.table.get(s, "int8", 64) is None for s in adds)  # never timed
    lm.calibrate(teacher, SHAPE)
    assert lm.overhead == pytest.approx(StairTarget.LAYER_EXTRA_MS)
    table = describe_layers(teacher, input_shape=SHAPE)
    units = sorted({layer.unit for layer in table.layers if layer.decides})
    shallow = build_student(teacher, table, Candidate.make(units[:5]), SHAPE)
    assert lm.predict(shallow, SHAPE) == pytest.approx(target.time_model(shallow, SHAPE, "int8", [64])[64])
