"""The CI gate: compare a report against budgets; a missed budget is a distinct exit code (3)."""

from __future__ import annotations

from compressor.pipeline.recipe import BudgetSection
from compressor.pipeline.report import GateResult, Report, gated_speedup


def evaluate_gate(report: Report, budget: BudgetSection) -> list[GateResult]:
    teacher = report.stages[0]
    final = next((s for s in report.stages if s.onnx_path == report.deployed), report.stages[-1])
    results = []
    if budget.max_accuracy_drop is not None:
        drop = None if final.top1 is None or teacher.top1 is None else teacher.top1 - final.top1
        ok = drop is not None and drop <= budget.max_accuracy_drop
        results.append(GateResult("max_accuracy_drop (pt)", budget.max_accuracy_drop, drop, ok,
                                  None if drop is None else budget.max_accuracy_drop - drop))
    if budget.min_speedup is not None:
        speedup, how = gated_speedup(report)
        ok = speedup is not None and speedup >= budget.min_speedup
        results.append(GateResult("min_speedup (x, p50 batch 1)", budget.min_speedup, speedup, ok,
                                  None if speedup is None else speedup - budget.min_speedup, how))
    if budget.max_size_mb is not None:
        size = final.onnx_size_mb
        ok = size is not None and size <= budget.max_size_mb
        results.append(GateResult("max_size_mb", budget.max_size_mb, size, ok,
                                  None if size is None else budget.max_size_mb - size))
    return results
