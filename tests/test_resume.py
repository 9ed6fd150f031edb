"""Resume that can be trusted, runs that never mix, deterministic artifacts (the run manifest).

A small recipe on a subset of the demo data (fold_bn, then a two-evaluation INT8 search; no bench) keeps each
run to seconds. Latencies are injected (timing is not what these tests test), through a stand-in that returns
clearly separated per-round figures so the quantize pass's timing decisions are the same in every run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import compressor
from compressor.core import files as files_module
from compressor.core.files import copy_atomic
from compressor.errors import CompressorError
from compressor.passes.quantize import Quantize
from compressor.pipeline.manifest import list_files

from .conftest import DEMO_TEACHER, ROOT
from .timing_doubles import quant_latency

QUANTIZE = {"quantize": {"max_evals": 2, "warm_start_db": "none", "latency_candidates": 1}}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recipe(data: Path, weights: Path, passes: list | None = None) -> dict:
    return {
        "model": {"name": "cifar_resnet20", "weights": str(weights)},
        "data": {"path": str(data), "validation": 100, "calibration": 100, "reference_per_class": 2},
        "passes": passes if passes is not None else [{"fold_bn": {}}, QUANTIZE],
        "export": ["onnx", "onnx_int8"] if passes is None else ["onnx"],
        "bench": {"enabled": False},
        "seed": 0,
    }


def _write_inputs(folder: Path, demo_dataset) -> tuple[Path, Path]:
    """A 700 + 200 image .npz of the demo data and a copy of the demo teacher, which tests may overwrite."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = demo_dataset
    np.savez(folder / "data.npz", train_images=ds.train.images[:700], train_labels=ds.train.labels[:700],
             test_images=ds.test.images[:200], test_labels=ds.test.labels[:200])
    shutil.copyfile(DEMO_TEACHER, folder / "teacher.pt")
    return folder / "data.npz", folder / "teacher.pt"


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _assert_one_run(out: Path, foreign: set[str] = frozenset()) -> dict:
    """The folder holds exactly what the manifest lists (plus the manifest and files compressor did not write)."""
    m = _manifest(out)
    assert m["complete"] and m["running"] is None
    assert set(list_files(out)) == set(m["files"]) | {"manifest.json"} | set(foreign)
    assert all(_sha(out / f) == h for f, h in m["files"].items())
    return m


@pytest.fixture(scope="module", autouse=True)
def _fake_latency():
    mp = pytest.MonkeyPatch()
    mp.setattr(Quantize, "measure_latency", staticmethod(quant_latency()))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, demo_dataset):
    return _write_inputs(tmp_path_factory.mktemp("inputs"), demo_dataset)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """One uninterrupted run of the recipe: the folder and the hashes every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "out"
    compressor.compress(_recipe(*inputs), out, progress=False)
    return out, {name: _sha(out / name) for name in ("model.onnx", "model_int8.onnx")}


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory, demo_dataset):
    """Another recipe's results (fold_bn only) with inputs of its own that a test may change."""
    data, weights = _write_inputs(tmp_path_factory.mktemp("fold_inputs"), demo_dataset)
    out = tmp_path_factory.mktemp("fold") / "out"
    compressor.compress(_recipe(data, weights, [{"fold_bn": {}}]), out, progress=False)
    return out, data, weights


def _recipe_file(folder: Path, recipe: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_manifest_lists_exactly_the_files_written(reference, inputs):
    out, _ = reference
    m = _assert_one_run(out)
    assert [s["name"] for s in m["stages"]] == ["01_fold_bn", "02_quantize"]
    quant = m["stages"][1]["files"]
    assert {"stages/02_quantize.pt", "quantized_int8.onnx", "quantize_fp32.onnx", "quantize_search.png"} <= set(quant)
    assert {"model.onnx", "model_int8.onnx", "report.json", "stages/00_teacher.onnx"} <= set(m["outputs"])
    assert m["inputs"]["weights"]["sha256"] == _sha(inputs[1]) and m["inputs"]["data"]["sha256"] == _sha(inputs[0])
    assert m["code"]["compressor"] == compressor.__version__ and len(m["code"]["source_sha256"]) == 64
    assert set(m["stages"][0]["inputs"]) == {"code", "weights", "model", "data", "recipe", "input"}
    # Stage 2 starts from the model stage 1 produced.
    assert m["stages"][1]["inputs"]["input"] == m["stages"][0]["output"]
    assert _sha(out / "model_int8.onnx") == quant["quantized_int8.onnx"]


def test_resume_reruns_a_corrupt_or_foreign_int8_artifact(reference, tmp_path, cli):
    ref_out, ref = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    recipe = _recipe_file(tmp_path, _manifest(out)["inputs"]["recipe"])
    artifact = out / "quantized_int8.onnx"
    good = artifact.read_bytes()
    tampered = {"truncated": good[:100_000], "another model": (out / "model.onnx").read_bytes()}
    for what, data in tampered.items():
        artifact.write_bytes(data)
        (out / "stages" / "tmpk1ll3d_x.tmp.pt").write_bytes(b"half a stage file")  # a write cut short by a kill
        code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--resume", "--quiet")
        assert code == 0, err
        assert "resume: reusing 01_fold_bn" in err, what
        assert "resume: re-running 02_quantize: quantized_int8.onnx does not match the manifest" in err, what
        assert _sha(out / "model_int8.onnx") == ref["model_int8.onnx"] and artifact.read_bytes() == good, what
        report = json.loads((out / "report.json").read_text())
        assert report["stages"][1]["details"].get("resumed") and not report["stages"][2]["details"].get("resumed")
        _assert_one_run(out)


def test_resume_reruns_when_weights_or_data_change_at_the_same_path(fold_run, tmp_path, cli):
    src, data, weights = fold_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    recipe = _recipe_file(tmp_path, _manifest(out)["inputs"]["recipe"])
    old_data, old_weights = data.read_bytes(), weights.read_bytes()
    try:
        # One pixel changed, same size, modification time put back: only the content says it changed.
        st = data.stat()
        arrays = dict(np.load(data))
        arrays["train_images"][0, 0, 0, 0] ^= 1
        np.savez(data, **arrays)
        os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert data.stat().st_size == st.st_size
        code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--resume", "--quiet")
        assert code == 0, err
        assert "resume: re-running 01_fold_bn: the data changed" in err
        state = torch.load(weights, weights_only=True)
        state["linear.bias"] = state["linear.bias"] + 0.5
        torch.save(state, weights)
        code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--resume", "--quiet")
        assert code == 0, err
        assert "resume: re-running 01_fold_bn: the weights file changed" in err
        m = _assert_one_run(out)
        assert m["inputs"]["weights"]["sha256"] == _sha(weights)
    finally:
        data.write_bytes(old_data)
        weights.write_bytes(old_weights)


def test_a_used_out_dir_is_refused_and_force_clears_only_owned_files(fold_run, reference, inputs, tmp_path, cli):
    src, _, _ = fold_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (out / "notes.txt").write_text("mine")
    (out / "stages" / "mine.txt").write_text("mine too")
    recipe = _recipe_file(tmp_path, _recipe(*inputs))
    before = set(list_files(out))
    code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--quiet")
    assert code == 2 and err.count("\n") == 1 and "--force" in err and "--resume" in err, err
    assert set(list_files(out)) == before
    code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--quiet", "--resume", "--force")
    assert code == 2 and "exclude each other" in err

    code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--quiet", "--force")
    assert code == 0, err
    assert "--force kept 2 file(s)" in err and "notes.txt" in err
    foreign = {"notes.txt", "stages/mine.txt"}
    _assert_one_run(out, foreign)
    # The same recipe and seed as the reference run, in another folder: byte-identical artifacts.
    assert {n: _sha(out / n) for n in reference[1]} == reference[1]


def test_foreign_out_dir_without_manifest(inputs, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("someone's notes")  # a name compressor writes, but no manifest says it did
    (out / "photo.jpg").write_bytes(b"x")
    recipe = _recipe_file(tmp_path, _recipe(*inputs, passes=[{"fold_bn": {}}]))
    code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--quiet")
    assert code == 2 and "not empty" in err and "--force" in err
    code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--quiet", "--resume")
    assert code == 2 and "has no manifest.json" in err and "--force" in err
    assert sorted(list_files(out)) == ["photo.jpg", "report.md"]


def test_killed_run_resumes_to_the_same_bytes(reference, inputs, tmp_path, cli):
    out = tmp_path / "out"
    recipe = _recipe_file(tmp_path, _recipe(*inputs))
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from tests.timing_doubles import quant_latency\n"
        "from compressor.passes.quantize import Quantize\n"
        "from compressor.cli import main\n"
        "Quantize.measure_latency = staticmethod(quant_latency())\n"
        f"sys.argv = ['compressor', 'compress', '--recipe', {str(recipe)!r}, '--out', {str(out)!r}, '--quiet']\n"
        "main()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not (out / "manifest.json").exists() or not _manifest(out)["stages"]:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never finished its first stage"
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    assert not _manifest(out)["complete"]
    code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--resume", "--quiet")
    assert code == 0, err
    assert "resume: reusing 01_fold_bn" in err and "resume: re-running 02_quantize" in err
    _assert_one_run(out)
    assert {n: _sha(out / n) for n in reference[1]} == reference[1]


def test_folder_data_digest_sees_content_not_times(tmp_path):
    from compressor.pipeline.manifest import data_digest

    root = tmp_path / "data"
    for split, cls in (("train", "cat"), ("test", "dog")):
        (root / split / cls).mkdir(parents=True)
        (root / split / cls / "a.png").write_bytes(b"\x01" * 64)
    first = data_digest(root)
    image = root / "train" / "cat" / "a.png"
    st = image.stat()
    image.write_bytes(b"\x02" * 64)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data_digest(root) != first
    image.write_bytes(b"\x01" * 64)
    assert data_digest(root) == first
    (root / "test" / "dog" / "a.png").rename(root / "test" / "dog" / "b.png")  # a renamed file counts too
    assert data_digest(root) != first


def test_exports_and_stage_files_are_byte_identical(teacher, tmp_path):
    """No time-, path- or process-dependent bytes: two ONNX exports, and two stage files, of one model."""
    from compressor.core.serialize import load_model, model_digest, save_model
    from compressor.runtime.export import export_onnx

    a, b = export_onnx(teacher, tmp_path / "a.onnx", (3, 32, 32)), export_onnx(teacher, tmp_path / "b.onnx", (3, 32, 32))
    assert a.read_bytes() == b.read_bytes()
    a, b = save_model(teacher, tmp_path / "a.pt", {"k": 1}), save_model(teacher, tmp_path / "b.pt", {"k": 1})
    assert a.read_bytes() == b.read_bytes()
    assert model_digest(load_model(a)[0]) == model_digest(teacher)


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.f.write(data[: self.room])
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _full_disk_open(room: int):
    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullDisk(f, room) if "w" in mode else f
    return fake_open


def test_full_disk_never_leaves_a_truncated_copy(tmp_path, monkeypatch):
    src = tmp_path / "src.onnx"
    src.write_bytes(os.urandom(3 << 20))
    dst = tmp_path / "model_int8.onnx"
    dst.write_bytes(b"the previous model")
    monkeypatch.setattr(files_module, "open", _full_disk_open(1 << 20), raising=False)
    with pytest.raises(CompressorError, match=r"no space left on device writing .*model_int8.onnx; free space or "
                                              r"choose another --out"):
        copy_atomic(src, dst)
    assert dst.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.onnx", "src.onnx"]


def test_full_disk_during_the_final_copy_is_a_one_line_error(reference, tmp_path, cli, monkeypatch):
    ref_out, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    recipe = _recipe_file(tmp_path, _manifest(out)["inputs"]["recipe"])
    monkeypatch.setattr(files_module, "open", _full_disk_open(4096), raising=False)
    code, _, err = cli("compress", "--recipe", recipe, "--out", out, "--resume", "--quiet")
    lines = [line for line in err.splitlines() if not line.startswith("resume:")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == f"error: no space left on device writing {out / 'model_int8.onnx'}; free space or choose another --out"
    assert not (out / "model_int8.onnx").exists() and not [f for f in list_files(out) if ".tmp" in f]
