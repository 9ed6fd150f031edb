"""End to end: recipe → stages → ONNX with parity → report, resume, the CI gate's exit codes, and bad input."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml

import compressor
import compressor.errors
from compressor.errors import GateFailed

from .conftest import DEMO_DATA, DEMO_TEACHER

FAST_BENCH = {"batches": [1, 64], "duration": 0.05, "warmup": 0.01, "threads": 2}


def demo_recipe(**extra) -> dict:
    r = {
        "model": {"name": "cifar_resnet20", "weights": str(DEMO_TEACHER)},
        "data": {"path": str(DEMO_DATA), "validation": 500, "calibration": 500},
        "passes": [{"fold_bn": {}}],
        "export": ["onnx"],
        "bench": FAST_BENCH,
        "seed": 0,
    }
    r.update(extra)
    return r


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    report = compressor.compress(demo_recipe(), out, progress=False)
    return out, report


def test_pipeline_writes_artifacts_and_report(finished_run):
    out, _ = finished_run
    for name in ("model.onnx", "report.json", "report.md", "accuracy_latency.png", "stages/01_fold_bn.pt"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    stages = [s["stage"] for s in data["stages"]]
    assert stages == ["teacher", "01_fold_bn", "export_onnx"]
    teacher, folded, export = data["stages"]
    assert 80 < teacher["top1"] < 95 and folded["top1"] == pytest.approx(teacher["top1"], abs=0.07)
    assert teacher["macs"] == 40_551_040  # 3x3 convs + the linear layer of ResNet-20 at 32x32
    assert folded["params"] < teacher["params"]  # BN parameters folded away
    assert export["details"]["parity"]["top1_agreement"] == 100.0
    assert export["details"]["parity"]["images"] == 1500
    for s in data["stages"]:
        assert s["latency_b1_p50_ms"] > 0 and s["throughput_b64_img_s"] > 0 and s["onnx_size_mb"] > 0
    # The headline's figures are the medians of its own paired rounds (real timings, so no speed is asserted).
    h = data["headline"]
    assert h["deployed"] == "model.onnx" and h["paired_rounds"] == 5
    for b in ("batch1", "batch64"):
        ratios = h["vs_teacher"][f"{b}_ratios"]
        assert len(ratios) == 5 and h["vs_teacher"][f"{b}_speedup"] == pytest.approx(statistics.median(ratios), abs=1e-3)
    assert data["versions"]["torch"] == torch.__version__
    assert "| teacher |" in (out / "report.md").read_text()
    assert not list(out.rglob("*.tmp"))


def test_resume_skips_intact_stages(finished_run):
    out, _ = finished_run
    stage = out / "stages" / "01_fold_bn.pt"
    before = stage.stat().st_mtime_ns
    report = compressor.compress(demo_recipe(), out, resume=True, progress=False)
    assert report.stages[1].details.get("resumed") is True
    assert stage.stat().st_mtime_ns == before
    # A damaged stage file is recomputed, not trusted.
    stage.write_bytes(b"garbage")
    report = compressor.compress(demo_recipe(), out, resume=True, progress=False)
    assert not report.stages[1].details.get("resumed")
    assert stage.stat().st_size > 1000



def test_resume_remeasures_reused_stages_under_new_targets_and_bench(finished_run, tmp_path):
    """Targets, the OpenVINO hint and bench settings are not part of a stage's key: a reused stage keeps its model
    but is measured again, so the report never shows figures taken under other settings."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run[0], out)
    recipe = demo_recipe(targets=["ort-cpu", "openvino-cpu"], bench={**FAST_BENCH, "enabled": False})
    report = compressor.compress(recipe, out, resume=True, progress=False)
    folded = report.stages[1]
    assert folded.details.get("resumed") is True
    assert folded.runtime_top1["openvino-cpu"] == pytest.approx(folded.top1, abs=0.2)  # OpenVINO f32 on the same file
    assert folded.latency == {} and folded.latency_b1_p50_ms is None and folded.throughput_b64_img_s is None
    again = compressor.compress(recipe, out, resume=True, progress=False).stages[1]
    assert again.details.get("resumed") is True and again.runtime_top1 == folded.runtime_top1


def test_the_headline_rounds_are_not_a_stage_rows_setting(tmp_path):
    """bench.rounds sets only the headline's paired timing: changing it must not re-time reused stage rows."""
    from compressor.pipeline.recipe import parse_recipe
    from compressor.pipeline.runner import Pipeline

    def measured_with(**bench):
        return Pipeline(parse_recipe(demo_recipe(bench={**FAST_BENCH, **bench})), tmp_path)._measured_with()

    assert measured_with(rounds=3) == measured_with(rounds=9)
    assert measured_with(duration=0.05) != measured_with(duration=0.1)

def test_check_gate_exit_codes(finished_run, cli):
    out, _ = finished_run
    code, stdout, _ = cli("check", out / "report.json", "--max-accuracy-drop", "0.5", "--max-size-mb", "50")
    assert code == 0 and stdout.count("PASS") == 2
    code, stdout, err = cli("check", out / "report.json", "--max-size-mb", "0.01")
    assert code == 3 and "FAIL max_size_mb" in stdout and "missed by" in err
    code, _, err = cli("check", out / "nope.json", "--max-size-mb", "1")
    assert code == 2 and "does not exist" in err


def test_compress_gate_miss_still_writes_report(tmp_path):
    out = tmp_path / "gated"
    with pytest.raises(GateFailed, match="max_size_mb"):
        compressor.compress(demo_recipe(budget={"max_size_mb": 0.01}), out, progress=False)
    data = json.loads((out / "report.json").read_text())
    assert data["gate_passed"] is False and (out / "model.onnx").is_file()
    gate = data["gate"][0]
    assert gate["passed"] is False and gate["margin"] < 0


def test_cli_compress_and_run_single_pass(tmp_path, cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(demo_recipe()))
    code, out, err = cli("compress", "--recipe", recipe, "--out", tmp_path / "a", "--quiet", "--no-bench",
                         "--max-accuracy-drop", "0.5")
    assert code == 0, err
    assert "export_onnx" in out
    code, out, err = cli("run", "fold_bn", "--model", "cifar_resnet20", "--weights", DEMO_TEACHER, "--data", DEMO_DATA,
                         "--out", tmp_path / "b", "--quiet", "--no-bench")
    assert code == 0, err
    assert (tmp_path / "b" / "model.onnx").is_file()
    code, out, _ = cli("passes")
    assert code == 0 and "fold_bn" in out


def _assert_clean_failure(cli, out_dir: Path, args, message: str):
    code, _, err = cli(*args, "--out", out_dir, "--quiet", "--no-bench")
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err
    assert message in err
    assert not out_dir.exists() or out_dir.is_file() or not any(out_dir.iterdir())


def test_bad_input_one_line_errors_and_no_partial_output(tmp_path, cli, monkeypatch):
    base = ["compress", "--model", "cifar_resnet20", "--data", DEMO_DATA]
    _assert_clean_failure(cli, tmp_path / "o1", base + ["--weights", tmp_path / "missing.pt"], "does not exist")
    pickled = tmp_path / "p.pt"
    from compressor.core.zoo import ZOO

    torch.save(ZOO["cifar_resnet20"](), pickled)
    _assert_clean_failure(cli, tmp_path / "o2", ["compress", "--data", DEMO_DATA, "--weights", pickled], "--allow-pickle")
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_clean_failure(cli, tmp_path / "o3", ["compress", "--model", "cifar_resnet20", "--weights", DEMO_TEACHER,
                                                 "--data", empty], "is empty")
    bad_recipe = tmp_path / "bad.yaml"
    bad_recipe.write_text("model:\n  name: cifar_resnet20\n  wieghts: x.pt\n")
    _assert_clean_failure(cli, tmp_path / "o4", ["compress", "--recipe", bad_recipe], "model.wieghts")
    _assert_clean_failure(cli, tmp_path / "o5", base + ["--weights", DEMO_TEACHER, "--input-shape", "3,8,8"],
                          "set model.input_shape")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _assert_clean_failure(cli, a_file, base + ["--weights", DEMO_TEACHER], "is a file")
    assert a_file.read_text() == "x"
    # Root may write anywhere (CI runs as root), so an unwritable folder is simulated at the permission check.
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr("compressor.pipeline.runner.os.access", lambda path, mode: Path(path) != ro)
    _assert_clean_failure(cli, ro / "out", base + ["--weights", DEMO_TEACHER], "not writable")


def test_tensorrt_export_fails_early_without_tensorrt(tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    out = tmp_path / "trt"
    with pytest.raises(compressor.errors.CompressorError, match="tensorrt extra"):
        compressor.compress(demo_recipe(export=["onnx", "tensorrt"]), out, progress=False)
    assert not out.exists()
