"""ONNX export parity on real images, and trtexec-style bench statistics and output."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from compressor.core.data import Preprocess
from compressor.errors import CompressorError
from compressor.runtime.bench import summarize
from compressor.runtime.export import check_parity, export_onnx


def test_export_parity_on_real_test_images(tmp_path, teacher, demo_splits):
    path = export_onnx(teacher, tmp_path / "m.onnx", (3, 32, 32))
    model = onnx.load(path)
    assert model.opset_import[0].version >= 17
    parity = check_parity(path, teacher, demo_splits.test, Preprocess())
    assert parity.images == 1500 and parity.top1_agreement == 100.0 and parity.max_abs_logit_diff < 1e-3
    # A reference that differs must make the check fail loudly.
    from compressor.core.metrics import predict

    ref = predict(teacher, demo_splits.test, Preprocess())
    ref[:, 0] += 10.0
    with pytest.raises(CompressorError, match="parity check failed"):
        check_parity(path, teacher, demo_splits.test, Preprocess(), reference=ref)


def test_summary_statistics_match_numpy():
    lat = list(np.random.default_rng(0).uniform(1, 5, 200))
    s = summarize(lat, batch=8, wall_s=2.0)
    assert s["throughput_qps"] == pytest.approx(100.0) and s["throughput_img_s"] == pytest.approx(800.0)
    assert s["latency_ms"]["median"] == pytest.approx(np.median(lat))
    assert s["latency_ms"]["p99"] == pytest.approx(np.percentile(lat, 99))
    assert s["latency_ms"]["min"] == min(lat) and s["latency_ms"]["max"] == max(lat)


def test_bench_cli_prints_trtexec_lines_and_json(tmp_path, teacher, cli):
    a = export_onnx(teacher, tmp_path / "a.onnx", (3, 32, 32))
    out_json = tmp_path / "b.json"
    code, out, err = cli("bench", a, "--batch", "1,4", "--duration", "0.2", "--warmup", "0.05", "--vs", a,
                         "--json", out_json)
    assert code == 0, err
    assert "Throughput:" in out and "qps" in out and "percentile(99%)" in out and "Ratio" in out
    data = json.loads(out_json.read_text())
    assert [r["batch"] for r in data["results"]] == [1, 4]
    r = data["results"][1]["ratio"]
    assert 0.3 < r["throughput"] < 3.0  # same file against itself, interleaved
    code, out, err = cli("bench", tmp_path / "missing.onnx")
    assert code == 2 and "does not exist" in err
