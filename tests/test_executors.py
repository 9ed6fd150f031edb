"""Executors: serial, a local process pool and Ray give the same reports, artifacts and N2N searches; a worker
killed mid-task is replaced and its task rerun; a task that raises fails the run naming the task; a real Ray
cluster started here is joined by address. Latencies are injected in the driver (timing is not tested here)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import compressor
from compressor.core.config import from_dict
from compressor.core.data import Preprocess
from compressor.core.executors import ExecutorConfig, SerialExecutor, make_executor, task_threads
from compressor.errors import CompressorError
from compressor.n2n.search import N2NConfig, N2NSearch
from compressor.passes import Context
from compressor.passes.quantize import Quantize
from compressor.quant.space import QuantConfig, config_space
from compressor.quant.tuner import Budget, XGBoostTuner, diverse_pick, search

from .timing_doubles import quant_latency

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "wall_seconds", "search_seconds_this_run", "executor"}


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not _has_ray(), reason="Ray is not installed (pip install -e '.[ray]')")


# ------------------------------------------------------------------------ tasks the workers import from here

def scaled_sum(shared: dict, task: tuple[int, str]) -> tuple[float, int, bool, int]:
    """Reads the shared array; kills its own worker process the first time it runs a task with a marker path."""
    index, marker = task
    if marker and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    row = shared["images"][index]
    return float(row.astype(np.float64).sum()) * shared["scale"], task_threads(), row.flags.writeable, os.getpid()


def fails_on_two(shared: dict, task: tuple[int, str]) -> int:
    if task[0] == 2:
        raise ValueError("bad input in task two\nsecond line of the message")
    return task[0]


def always_dies(shared: dict, task: tuple[int, str]) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


SHARED = {"images": (np.arange(4 * 40000) % 251).astype(np.uint8).reshape(4, 40000), "scale": 0.5}  # out of band


# -------------------------------------------------------------------------------------------- fixtures

def _strip(value):
    """A report without what legitimately differs between executors: timings and the executor settings."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _artifacts(out: Path) -> dict[str, str]:
    files = [*out.glob("*.onnx"), *out.glob("stages/*.onnx")]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


@pytest.fixture(scope="module")
def small_recipe(demo_dataset, tmp_path_factory):
    """fold_bn + quantize on a real subset of the demo data (1,500 train and 250 test images, to keep it fast)."""
    data = tmp_path_factory.mktemp("data") / "demo-small.npz"
    train, test = demo_dataset.train, demo_dataset.test
    np.savez(data, train_images=train.images[::2], train_labels=train.labels[::2], test_images=test.images[::6],
             test_labels=test.labels[::6])
    return {
        "model": {"name": "cifar_resnet20", "weights": str(ROOT / "demo" / "cifar10_resnet20.pt")},
        "data": {"path": str(data), "validation": 200, "calibration": 200},
        "passes": [{"fold_bn": {}}, {"quantize": {"max_evals": 4, "batch": 2, "latency_candidates": 2}}],
        "export": ["onnx", "onnx_int8"],
        "bench": {"enabled": False},
        "seed": 0,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_tree(*markers: str) -> set[int]:
    """Processes whose command line contains one of ``markers``, and their descendants (Linux /proc)."""
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                procs[int(d.name)] = (int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), cmd)
            except (OSError, ValueError, IndexError):
                continue
    tree = {pid for pid, (_, cmd) in procs.items() if any(m in cmd for m in markers)}
    while grown := {pid for pid, (ppid, _) in procs.items() if ppid in tree} - tree:
        tree |= grown
    return tree


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node Ray cluster started with ``ray start --head`` on localhost, its head address; stopped at the
    end (only this cluster: ``ray stop`` would stop every Ray of this user on the machine). Token authentication
    is off here: Ray 2.60's ``ray start`` turns it on whenever a token file exists, but a driver joining by
    address only uses it with RAY_AUTH_MODE=token, so it would depend on which test created a token first."""
    if not _has_ray():
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    import ray

    ray.shutdown()  # the other tests' local instance: its daemons would compete with the cluster's
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    port, agent_port = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path_factory.mktemp("ray") / "ray_start.log"
    ours = (f"--gcs_server_port={port} ", f":{port} ")  # the GCS, and every daemon that talks to it
    # Output to a file, not a pipe: Ray's daemons inherit it and would hold a pipe open past a timeout. The
    # agent's fixed default port is replaced by a free one (another Ray on the machine may hold it).
    with open(log, "w") as out:
        started = subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                                  "--dashboard-agent-listen-port", str(agent_port), "--num-cpus", "2",
                                  "--include-dashboard", "false", "--disable-usage-stats"],
                                 env=env, stdout=out, stderr=subprocess.STDOUT, timeout=180)
    try:
        if started.returncode != 0:
            pytest.fail(f"ray start failed: {log.read_text()[-2000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _process_tree(*ours):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            for _ in range(15):
                if not _process_tree(*ours):
                    break
                time.sleep(0.2)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 CPUs for the tests that compare executors (executors join it, and leave it
    running, instead of starting their own each time); None without Ray."""
    if not _has_ray():
        yield None
        return
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _kinds() -> list[dict]:
    kinds = [{"kind": "processes", "workers": 2}]
    return kinds + ([{"kind": "ray", "workers": 2}] if _has_ray() else [])


# ----------------------------------------------------------------------------------------------- tests

def test_executor_section_is_validated():
    assert from_dict(ExecutorConfig, {"kind": "processes", "workers": 2}, "executor").worker_count() == 2
    with pytest.raises(CompressorError, match="executor.kind"):
        from_dict(ExecutorConfig, {"kind": "threads"}, "executor")
    with pytest.raises(CompressorError, match="address is for kind ray"):
        from_dict(ExecutorConfig, {"kind": "processes", "address": "ray://h:1"}, "executor")
    with pytest.raises(CompressorError, match="workers > 1 needs kind processes or ray"):
        from_dict(ExecutorConfig, {"workers": 4}, "executor")


def test_reports_and_artifacts_are_identical_across_executors(small_recipe, local_ray, tmp_path, monkeypatch):
    """fold_bn + a 4-evaluation INT8 search in rounds of 2: serial, processes and local Ray write the same report
    (timings aside) and the same ONNX bytes."""
    monkeypatch.setattr(Quantize, "measure_latency", staticmethod(quant_latency()))
    runs = {}
    for executor in [{"kind": "serial"}, *_kinds()]:
        out = tmp_path / executor["kind"]
        report = compressor.compress({**small_recipe, "executor": executor}, out, progress=False)
        runs[executor["kind"]] = (_strip(json.loads((out / "report.json").read_text())), _artifacts(out), report)
    serial, serial_files, report = runs["serial"]
    search = next(s for s in report.stages if s.stage == "02_quantize").details
    assert search["evaluations"] == 4 and len(search["search"][0]["steps"]) == 4
    assert "model_int8.onnx" in serial_files and "stages/01_fold_bn.onnx" in serial_files
    for kind, (other, files, _) in runs.items():
        assert other == serial, kind
        assert files == serial_files, kind


def test_n2n_search_is_identical_across_executors(demo_splits, teacher, local_ray, tmp_path):
    """A tiny two-stage N2N search trains its students as tasks: the same histories, measurements and final
    student under every executor."""
    config = N2NConfig(removal_iterations=1, shrink_iterations=1, rollouts=2, student_steps=2, student_batch_size=32,
                       subset_size=256, final_steps=2, tune_mode=False)
    splits = dataclasses.replace(demo_splits, validation=demo_splits.validation.subset(np.arange(200)))
    results = {}
    for executor in [{"kind": "serial"}, *_kinds()]:
        with make_executor(ExecutorConfig(**executor)) as ex:
            ctx = Context(splits, teacher, Preprocess(), (3, 32, 32), tmp_path / executor["kind"], progress=False,
                          executor=ex)
            search = N2NSearch(teacher, ctx, config)
            result = search.run()
        measured = {k: (m.valid, m.accuracy, m.params, m.macs, m.error) for k, m in search.measurements.items()}
        results[executor["kind"]] = (search.history(), measured, result)
    history, measured, result = results["serial"]
    assert len(measured) >= 2
    for kind, (h, m, r) in results.items():
        assert h == history and m == measured, kind
        assert r.candidate == result.candidate, kind
        for name, value in r.model.state_dict().items():
            assert torch.equal(value, result.model.state_dict()[name]), (kind, name)


@pytest.mark.parametrize("kind", ["processes", pytest.param("ray", marks=needs_ray)])
def test_a_killed_worker_is_replaced_and_its_task_rerun(kind, local_ray, tmp_path):
    """Task 1 kills its own worker process (SIGKILL) the first time; the run finishes with serial's results."""
    tasks = [(i, str(tmp_path / "killed") if i == 1 else "") for i in range(4)]
    expected = SerialExecutor().map(scaled_sum, [(i, "") for i in range(4)], SerialExecutor().put(SHARED))
    with make_executor(ExecutorConfig(kind=kind, workers=2, retries=1)) as ex:
        got = ex.map(scaled_sum, tasks, ex.put(SHARED))
        killed_pid = int((tmp_path / "killed").read_text())
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        assert got[1][3] != killed_pid  # rerun in another process
        assert not any(g[2] for g in got)  # workers read the shared arrays by reference, read-only
        with pytest.raises(CompressorError, match=r"^task 2 failed \(\w+ executor\): ValueError: bad input in task two$"):
            ex.map(fails_on_two, [(i, "") for i in range(4)], ex.put(SHARED))
        if kind == "processes":  # Ray counts its own retries (max_retries); a pool that gives up is ours to test
            with pytest.raises(CompressorError, match="^the doomed task: its worker process died 2 times"):
                ex.map(always_dies, [(0, "")], ex.put(SHARED), names=["the doomed task"])
            assert [g[:2] for g in ex.map(scaled_sum, tasks, ex.put(SHARED))] == [e[:2] for e in expected]


def test_serial_task_errors_name_the_task():
    with pytest.raises(CompressorError, match=r"^task 2 failed \(serial executor\): ValueError: bad input in task two$"):
        SerialExecutor().map(fails_on_two, [(i, "") for i in range(4)], SerialExecutor().put(SHARED))


@needs_ray
def test_shared_objects_outlive_the_local_ray_that_release_shut_down():
    """N2N and Quantune put their shared state once, then release the executor before every timing: a local
    instance the executor started is shut down, and the next round's tasks must still get the shared object."""
    import ray

    ray.shutdown()  # no instance to join: the executor starts (and releases) its own. Runs before the cluster
    # test: after a driver has joined a cluster with authentication off, Ray's in-process state refuses to start
    # a new local instance.
    expected = [e[:2] for e in SerialExecutor().map(scaled_sum, [(i, "") for i in range(4)], SerialExecutor().put(SHARED))]
    with make_executor(ExecutorConfig(kind="ray", workers=2)) as ex:
        shared = ex.put(SHARED)
        assert [g[:2] for g in ex.map(scaled_sum, [(i, "") for i in range(4)], shared)] == expected
        ex.release()
        assert not ray.is_initialized()
        assert [g[:2] for g in ex.map(scaled_sum, [(i, "") for i in range(4)], shared)] == expected
    assert not ray.is_initialized()

def test_ray_cluster_joined_by_address(ray_cluster, tmp_path, monkeypatch):
    """A cluster started with ``ray start --head`` and joined by its address runs the tasks with the serial
    executor's results, a killed worker included, and is left running by the executor that joined it."""
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # as the cluster
    expected = [e[:2] for e in SerialExecutor().map(scaled_sum, [(i, "") for i in range(4)], SerialExecutor().put(SHARED))]
    tasks = [(i, str(tmp_path / "killed") if i == 3 else "") for i in range(4)]
    with make_executor(ExecutorConfig(kind="ray", address=ray_cluster)) as ex:
        assert [g[:2] for g in ex.map(scaled_sum, tasks, ex.put(SHARED))] == expected
        assert ray.cluster_resources().get("CPU") == 2
    assert (tmp_path / "killed").is_file()
    assert ray.is_initialized()  # a cluster this executor joined is not shut down by it
    ray.shutdown()



def _landscape(config: QuantConfig) -> float:
    score = {"max": 90.0, "entropy": 90.6, "percentile": 90.4, "mse": 90.5}[config.clipping] + 0.5 * (config.granularity == "per_channel")
    return score + {"asymmetric": 0.3, "symmetric": -1.0, "symmetric_uint8": 0.2, "power_of_two": -0.5}[config.scheme]


def test_batched_search_plans_rounds_of_distinct_configurations():
    """The XGBoost tuner proposes rounds of ``batch`` unexplored configurations between refits, the same for a
    seed whatever evaluates them; a round is diverse rather than the model's near-duplicates."""
    space = config_space("ort-cpu", 500)
    desc = {"nodes": 50.0, "conv": 19.0, "bn": 19.0, "act": 19.0, "skip": 9.0, "depthwise": 0.0, "pointwise": 0.0,
            "size_mb": 1.1}
    rounds = []

    def evaluate_many(configs):
        rounds.append(list(configs))
        return [_landscape(c) for c in configs]

    result = search(XGBoostTuner(desc, 91.0), space, _landscape, Budget(10), seed=1, batch=4, evaluate_many=evaluate_many)
    assert [len(r) for r in rounds] == [4, 4, 2]  # the last round stops at the evaluation budget
    assert len({s.config for s in result.steps}) == 10 and [s.config for s in result.steps] == sum(rounds, [])
    again = search(XGBoostTuner(desc, 91.0), space, _landscape, Budget(10), seed=1, batch=4)
    assert [s.config for s in again.steps] == [s.config for s in result.steps]
    # Diversity: after the best-ranked configuration, the one adding the most new knob values, not its twin.
    a = QuantConfig(1000, "entropy", "asymmetric", "per_channel", "int8")
    twin, other = QuantConfig(10000, "entropy", "asymmetric", "per_channel", "int8"), QuantConfig(
        1000, "percentile", "symmetric_uint8", "per_tensor", "mixed")
    assert diverse_pick([a, twin, other], 2) == [a, other]
    assert diverse_pick([a, twin, other], 1) == [a]


def test_cli_executor_options(small_recipe, tmp_path, cli):
    from compressor.cli import _apply_executor

    data = _apply_executor({"executor": {"kind": "ray", "address": "h:1", "threads": 2}}, "processes", 3)
    assert data["executor"] == {"kind": "processes", "workers": 3, "threads": 2}
    assert _apply_executor({}, "ray://10.0.0.1:10001", None)["executor"] == {"kind": "ray", "address": "ray://10.0.0.1:10001"}
    code, _, err = cli("compress", "--model", "cifar_resnet20", "--data", small_recipe["data"]["path"], "--out",
                       tmp_path, "--executor", "threads")
    assert code == 2 and "--executor 'threads'" in err
    code, out, _ = cli("passes")
    assert code == 0 and "executor (recipe section" in out and "kind: str = 'serial'  (serial | processes | ray)" in out
