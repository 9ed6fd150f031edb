"""The one report object of a run, rendered as report.json, report.md and an accuracy-vs-latency plot."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.core.files import save_figure, write_atomic
from compressor.errors import CompressorError


@dataclass
class StageRecord:
    """One row of the report: a model state after the teacher, a pass, or an export."""

    stage: str
    kind: str  # teacher | pass | export
    top1: float | None = None  # test split, percent
    delta_top1: float | None = None  # vs teacher, percentage points
    agreement: float | None = None  # top-1 agreement with the teacher on test, percent
    params: int | None = None
    macs: int | None = None
    onnx_path: str | None = None
    onnx_size_mb: float | None = None
    latency_b1_p50_ms: float | None = None  # on the recipe's first target (the gate's fallback for older reports)
    throughput_b64_img_s: float | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # the pass's own metrics
    plots: dict[str, str] = field(default_factory=dict)  # name -> path relative to the output folder
    artifact: dict[str, Any] | None = None  # Artifact.as_dict() of a pass that wrote a deployable file
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> p50_b1_ms, img_s_b64 (+ precision)
    runtime_top1: dict[str, float] = field(default_factory=dict)  # target -> test top-1 run there, where it can differ


@dataclass
class GateResult:
    limit: str
    required: float
    actual: float | None
    passed: bool
    margin: float | None  # how far inside (+) or outside (−) the limit
    measured: str = ""  # how ``actual`` was measured, where it depends on the report (min_speedup)


@dataclass
class Report:
    stages: list[StageRecord] = field(default_factory=list)
    deployed: str | None = None  # path of the artifact to ship
    gate: list[GateResult] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    headline: dict[str, Any] = field(default_factory=dict)  # see :func:`headline`

    @property
    def gate_passed(self) -> bool:
        return all(g.passed for g in self.gate)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gate_passed"] = self.gate_passed
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "report") -> Report:
        """The report a ``to_dict`` mapping describes; every field's type is checked, naming its key."""
        from compressor.core.config import from_dict

        return from_dict(cls, {k: v for k, v in d.items() if k != "gate_passed"}, "", source)


def versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import torch

    from compressor import __version__

    out = {
        "compressor": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }
    try:
        from importlib.metadata import version

        out["openvino"] = version("openvino")
    except ImportError:  # PackageNotFoundError is an ImportError: the optional extra is not installed
        pass
    return out


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def targets(report: Report) -> list[str]:
    """The runtimes the report times every stage on, the gated one first."""
    return list(report.recipe.get("targets") or ["ort-cpu"])


def _latency(s: StageRecord, target: str, key: str, first: bool) -> float | None:
    if target in s.latency:
        return s.latency[target].get(key)
    if first:  # a report written before per-target latency
        return s.latency_b1_p50_ms if key == "p50_b1_ms" else s.throughput_b64_img_s
    return None


SLOWER_TOLERANCE = 0.10
"""A stage is flagged as slower than its input only beyond this fraction: identical models timed in separate
windows differ by several percent on a shared 2-core machine (docs/performance.md), more with short windows."""


def stage_speed(report: Report, stage: StageRecord, target: str = "ort-cpu") -> tuple[float | None, float | None]:
    """(p50 latency ms at batch 1, img/s at batch 64) of a stage on ``target``, None where it was not timed."""
    first = target == targets(report)[0]
    return _latency(stage, target, "p50_b1_ms", first), _latency(stage, target, "img_s_b64", first)


def _speedups(base: tuple, new: tuple) -> dict[str, float | None]:
    (b1, tp), (n1, ntp) = base, new
    return {"batch1_speedup": b1 / n1 if b1 and n1 else None, "batch64_speedup": ntp / tp if tp and ntp else None}


def headline(report: Report, target: str = "ort-cpu", paired: dict[str, dict | None] | None = None,
             time_pair: Callable[[StageRecord, StageRecord], dict | None] | None = None) -> dict[str, Any]:
    """The end-to-end figure: the deployed artifact against the teacher on ``target`` at batch 1 (p50 latency) and
    64 (throughput) and against the teacher's ONNX Runtime FP32 (the common baseline across targets), with Δ test
    top-1; and every pass stage slower on ``target`` than the stage before it (``SLOWER_TOLERANCE``).

    ``paired``: ``vs_teacher`` and ``vs_teacher_ort_fp32`` as :func:`compressor.runtime.latency.paired_speedup`
    gives them, from the teacher and the deployed artifact timed alternately. Without it the speed-ups divide the
    stage rows' figures, which were timed minutes apart: a shared host that changes speed in between moves them.
    ``time_pair(input, stage)``: the same paired figures for a stage against its input; a stage the rows show
    slower is flagged only when these confirm it (without ``time_pair``, on the rows alone)."""
    teacher = report.stages[0]
    deployed = next((s for s in report.stages if s.kind == "export" and s.onnx_path == report.deployed), None)
    if deployed is None:
        return {}
    top1 = deployed.runtime_top1.get(target, deployed.top1)  # measured in the target's runtime where it differs
    out: dict[str, Any] = {
        "target": target, "deployed": report.deployed, "top1": top1, "delta_top1": top1 - teacher.top1,
        "vs_teacher": _speedups(stage_speed(report, teacher, target), stage_speed(report, deployed, target)),
        "vs_teacher_ort_fp32": _speedups(stage_speed(report, teacher), stage_speed(report, deployed, target)),
        "paired_rounds": 0, "slower_stages": [],
    }
    for key, p in (paired or {}).items():
        if p is not None:
            out[key] = {"batch1_speedup": p["batch1_speedup"], "batch64_speedup": p["throughput_speedup"],
                        "batch1_trimmed": p["batch1_trimmed"], "batch64_trimmed": p["throughput_trimmed"],
                        "batch1_ratios": p["batch1_ratios"], "batch64_ratios": p["throughput_ratios"]}
            out["paired_rounds"] = p["rounds"]
    previous = teacher
    for s in (s for s in report.stages if s.kind == "pass"):
        ratios = _speedups(stage_speed(report, previous, target), stage_speed(report, s, target))
        slower = _slower(ratios)
        if slower and time_pair is not None and (p := time_pair(previous, s)) is not None:
            # Confirmed when all paired rounds but the most extreme quarter at each end show it (beyond noise).
            ratios = {"batch1_speedup": p["batch1_speedup"], "batch64_speedup": p["throughput_speedup"],
                      "paired_rounds": p["rounds"]}
            slower = min(p["batch1_trimmed"][1], p["throughput_trimmed"][1]) < 1 - SLOWER_TOLERANCE
        if slower:
            out["slower_stages"].append({"stage": s.stage, "input": previous.stage, **ratios})
        previous = s
    return out


def _slower(ratios: dict[str, float | None]) -> bool:
    return any(ratios.get(k) is not None and ratios[k] < 1 - SLOWER_TOLERANCE for k in ("batch1_speedup", "batch64_speedup"))


def gated_speedup(report: Report) -> tuple[float | None, str]:
    """The batch-1 speed-up of the deployed artifact over the teacher the gate reads, and how it was timed: the
    headline's paired figure, or for a report without one, the ratio of the two stage rows on the first target."""
    h = report.headline
    rounds = h.get("paired_rounds")
    if rounds:
        v = h.get("vs_teacher")
        speedup = v.get("batch1_speedup") if isinstance(v, dict) else "missing"
        if not _count(rounds) or not (speedup is None or _positive(speedup)):
            raise CompressorError(f"report.json's headline is malformed (paired_rounds {rounds!r}, vs_teacher.batch1_speedup "
                                  f"{speedup!r}); write the report again with compressor compress")
        return speedup, f"on {h.get('target')}, {rounds} paired rounds"
    teacher = report.stages[0]
    final = next((s for s in report.stages if s.onnx_path == report.deployed), report.stages[-1])
    t, f = teacher.latency_b1_p50_ms, final.latency_b1_p50_ms
    return (t / f if t and f else None), f"stage rows on {targets(report)[0]}, unpaired"


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _range(r: list[float] | None) -> str:
    return "–" if not r else f"{r[0]:.2f}–{r[1]:.2f}×"


def render_headline(h: dict[str, Any]) -> list[str]:
    if not h:
        return []
    t = h["target"]
    lines = [f"## Headline ({t})", "",
             f"`{h['deployed']}` (deployed): test top-1 {_fmt(h['top1'], '.2f')} % "
             f"({_fmt(h['delta_top1'], '+.2f')} pt vs the teacher).", "",
             "| speed-up of the deployed artifact over | batch 1 (p50 latency) | batch 64 (throughput) |", "|---|---|---|",
             f"| the teacher on {t} | {_x(h['vs_teacher']['batch1_speedup'])} | "
             f"{_x(h['vs_teacher']['batch64_speedup'])} |",
             f"| the teacher in ONNX Runtime FP32 | {_x(h['vs_teacher_ort_fp32']['batch1_speedup'])} | "
             f"{_x(h['vs_teacher_ort_fp32']['batch64_speedup'])} |", ""]
    if h.get("paired_rounds"):
        v = h["vs_teacher"]
        lines += [f"Timed in {h['paired_rounds']} paired rounds: the teacher and the deployed artifact alternate, each in "
                  "a fresh process; each figure is the median of the per-round ratios (all rounds but the most extreme "
                  f"quarter at each end: {_range(v.get('batch1_trimmed'))} at batch 1, {_range(v.get('batch64_trimmed'))} "
                  "at batch 64). The stage rows below were timed minutes apart.", ""]
    elif any(v is not None for k in ("vs_teacher", "vs_teacher_ort_fp32") for v in h[k].values()):
        lines += ["From the stage rows below, timed minutes apart (no paired timing in this report).", ""]
    for s in h["slower_stages"]:
        how = f", {s['paired_rounds']} paired rounds" if s.get("paired_rounds") else ", from the stage rows"
        lines.append(f"**Slower than its input:** {s['stage']} runs slower on {t} than {s['input']} (speed-up "
                     f"{_x(s['batch1_speedup'])} at batch 1, {_x(s['batch64_speedup'])} at batch 64{how}).")
    return lines + ([""] if h["slower_stages"] else [])


def render_markdown(report: Report) -> str:
    names = targets(report)
    hint = report.recipe.get("openvino", {}).get("precision", "f32")
    extra = [f"top-1 % openvino-cpu ({hint})"] if "openvino-cpu" in names else []
    extra += [f"{k} {t}" for t in names for k in ("p50 b1 ms", "img/s b64")]
    lines = [
        "# Compression report", "", *render_headline(report.headline),
        "| stage | top-1 % | Δ vs teacher | agree % | params | MACs (M) | ONNX MB | " + " | ".join(extra) + " | time s |",
        "|---|---|---|---|---|---|---|" + "---|" * len(extra) + "---|",
    ]
    for s in report.stages:
        cells = [_fmt(s.runtime_top1.get("openvino-cpu"), ".2f")] if "openvino-cpu" in names else []
        for i, t in enumerate(names):
            cells += [_fmt(_latency(s, t, "p50_b1_ms", i == 0), ".3f"), _fmt(_latency(s, t, "img_s_b64", i == 0), ",.0f")]
        lines.append(
            f"| {s.stage} | {_fmt(s.top1, '.2f')} | {_fmt(s.delta_top1, '+.2f')} | {_fmt(s.agreement, '.2f')} | "
            f"{_fmt(s.params, ',')} | {_fmt(None if s.macs is None else s.macs / 1e6, '.2f')} | "
            f"{_fmt(s.onnx_size_mb, '.3f')} | " + " | ".join(cells) + f" | {s.seconds:.1f} |"
        )
    lines += ["", f"Deployed artifact: `{report.deployed}`", ""]
    for s in report.stages:  # the quantize pass's float layers: keep_float, mixed precision, the accuracy goal
        if s.details.get("float_layers"):
            lines.append(f"Layers {s.stage} kept in float: {', '.join(f'`{n}`' for n in s.details['float_layers'])}")
        goal = s.details.get("accuracy_goal")
        if goal:
            end = (goal["val_top1_per_step"] or [goal["start_val_top1"]])[-1]
            lines.append(f"Accuracy goal of {s.stage} (validation top-1 ≥ {goal['goal_val_top1']:.2f}): "
                         f"{'met' if goal['met'] else 'NOT met'} after {len(goal['layers'])} layer(s) back to float"
                         f" ({goal['start_val_top1']:.2f} → {end:.2f})")
    lines.append("")
    if report.gate:
        lines += ["## Gate", "", "| limit | required | actual | result |", "|---|---|---|---|"]
        for g in report.gate:
            lines.append(f"| {g.limit} | {g.required:g} | {_fmt(g.actual, '.3f')}{f' ({g.measured})' if g.measured else ''} | "
                         f"{'pass' if g.passed else f'FAIL by {-g.margin:.3f}' if g.margin is not None else 'FAIL'} |")
        lines += ["", f"**Gate {'passed' if report.gate_passed else 'FAILED'}.**", ""]
    for s in report.stages:
        for name, path in s.plots.items():
            lines.append(f"![{s.stage} {name}]({path})")
    lines += ["", "![accuracy vs latency](accuracy_latency.png)", ""]
    lines += ["## Run", "", f"- seed: {report.seed}", f"- wall time: {report.wall_seconds:.1f} s"]
    lines += [f"- {k}: {v}" for k, v in report.versions.items()]
    lines += ["", "Recipe:", "", "```json", json.dumps(report.recipe, indent=2), "```", ""]
    return "\n".join(lines)


def plot_accuracy_latency(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in report.stages:  # export rows repeat their stage's figures, so only teacher and passes are drawn
        if s.kind != "export" and s.top1 is not None and s.latency_b1_p50_ms is not None:
            ax.scatter(s.latency_b1_p50_ms, s.top1)
            ax.annotate(s.stage, (s.latency_b1_p50_ms, s.top1), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"{targets(report)[0]} p50 latency, batch 1 (ms)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy vs latency per stage")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_report(report: Report, out_dir: Path) -> None:
    plot_accuracy_latency(report, out_dir / "accuracy_latency.png")
    write_atomic(out_dir / "report.json", json.dumps(report.to_dict(), indent=2))
    write_atomic(out_dir / "report.md", render_markdown(report))


def read_report(path: str | Path) -> Report:
    """A report.json, checked field by field: a wrong type names its key (``stages[0].top1``), an empty or
    foreign file says so."""
    path = Path(path)
    if path.is_dir():
        raise CompressorError(f"report {path} is a folder; give the report.json inside it")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompressorError(f"report {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompressorError(f"{path} is not a compressor report.json ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise CompressorError(f"{path} is not a compressor report.json: it holds a {type(data).__name__}, not a mapping")
    if not isinstance(data.get("stages"), list) or not data["stages"]:
        raise CompressorError(f"{path} is not a compressor report.json: it has no stages (the teacher row comes first)")
    return Report.from_dict(data, f"report {path}")
