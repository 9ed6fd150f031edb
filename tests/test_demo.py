"""The demo recipe end to end, as `compressor compress --recipe recipes/demo.yaml` runs it: which artifact is
deployed when INT8 is faster and when it is not, that the gate judges that artifact, and --resume across the
quantize stage. Latencies are injected (timing is not what this tests: the quantize pass's check and the prune
pass's latency table come from doubles); only the bench windows are shortened."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import compressor
from compressor.passes.quantize import Quantize
from compressor.pipeline import runner
from compressor.pipeline.gate import evaluate_gate
from compressor.pipeline.recipe import BudgetSection, read_recipe_file

from .timing_doubles import PairedClock, quant_latency

ROOT = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    recipe = read_recipe_file(ROOT / "recipes" / "demo.yaml")
    recipe["model"]["weights"] = str(ROOT / recipe["model"]["weights"])
    recipe["data"]["path"] = str(ROOT / recipe["data"]["path"])
    recipe["bench"] = {**recipe["bench"], "duration": 0.05, "warmup": 0.01}
    return recipe, tmp_path_factory.mktemp("demo") / "out"


def _stage(report, name):
    return next(s for s in report.stages if s.stage == name)


def test_demo_deploys_int8_when_faster_then_fp32_when_not(demo, monkeypatch, stair_target):
    recipe, out = demo
    monkeypatch.setattr(Quantize, "measure_latency", staticmethod(quant_latency(True)))
    clock = PairedClock()
    monkeypatch.setattr(runner, "measure_isolated", clock)
    report = compressor.compress(recipe, out, progress=False)
    # The headline and the gate read the teacher and the deployed file timed in the same rounds, teacher as base.
    assert clock.calls[0] == ({"teacher": ("00_teacher.onnx", "onnxruntime-cpu"),
                               "deployed": ("model_int8.onnx", "onnxruntime-cpu")}, 64, 5, 64)
    # Any further call times a stage the (real, short) stage rows show slower against its input; the clock
    # times those alike, so none stays flagged.
    assert all(set(c[0]) == {"before", "stage"} for c in clock.calls[1:]) and report.headline["slower_stages"] == []
    assert report.headline["paired_rounds"] == 5 and report.headline["vs_teacher"]["batch1_speedup"] == 2.0
    assert report.headline["vs_teacher"]["batch64_speedup"] == 3.0
    assert evaluate_gate(report, BudgetSection(min_speedup=1.9))[0].actual == 2.0
    assert [s.stage for s in report.stages] == ["teacher", "01_prune", "02_fold_bn", "03_quantize", "export_onnx",
                                                "export_onnx_int8"]
    assert _stage(report, "01_prune").details["latency"]["predicted_speedup"] >= 2.7  # the recipe's target_speedup
    assert report.headline["deployed"] == "model_int8.onnx" and "## Headline" in (out / "report.md").read_text()
    quant = _stage(report, "03_quantize")
    assert quant.artifact["precision"] == "int8" and quant.artifact["deploy"] is True
    assert report.deployed == "model_int8.onnx" and _sha(out / "model_int8.onnx") == _sha(out / quant.artifact["path"])
    assert "search" in quant.plots and (out / quant.plots["search"]).is_file()
    # The gate judges the deployed INT8 model, not the FP32 export.
    drop = report.gate[0]
    assert drop.actual == pytest.approx(report.stages[0].top1 - _stage(report, "export_onnx_int8").top1)
    int8_hash = _sha(out / "model_int8.onnx")

    # Resumed across the quantize stage: nothing is recomputed and the deployed bytes are the same.
    report = compressor.compress(recipe, out, resume=True, progress=False)
    assert all(s.details.get("resumed") for s in report.stages[1:4])
    assert report.deployed == "model_int8.onnx" and _sha(out / "model_int8.onnx") == int8_hash

    # Re-run only the quantize stage with INT8 slower than FP32: the fallback deploys the FP32 export.
    (out / "stages" / "03_quantize.pt").unlink()
    monkeypatch.setattr(Quantize, "measure_latency", staticmethod(quant_latency(False)))
    report = compressor.compress(recipe, out, resume=True, progress=False)
    assert report.stages[1].details.get("resumed") and not _stage(report, "03_quantize").details.get("resumed")
    quant = _stage(report, "03_quantize")
    assert quant.artifact["deploy"] is False and "not faster" in quant.details["speed_note"]
    headline_timings = [c[0]["deployed"] for c in clock.calls if "deployed" in c[0]]
    assert report.deployed == "model.onnx" and headline_timings[-1] == ("model.onnx", "onnxruntime-cpu")
    assert report.gate[0].actual == pytest.approx(report.stages[0].top1 - _stage(report, "export_onnx").top1)
