"""Executors: one interface that maps a function over independent tasks, in this process, in a local pool of
worker processes or on a Ray cluster, with results that do not depend on which one ran them.

``executor.map(fn, tasks, shared)`` calls ``fn(shared_object, task)`` for every task and returns the results in
task order. The large inputs every task reads (a model, data splits) are handed over once with
``executor.put(obj)``, never pickled per task: the process pool writes them once to files that its workers
memory-map (:mod:`compressor.core.process_pool`), Ray keeps them in its object store
(:mod:`compressor.core.ray_executor`). Quantune's candidate evaluation and N2N's student training use it.

Identical results are a property of the tasks and of this interface together:

- a task draws its randomness from a seed derived from the run's seed and its own identity (for example
  ``compressor.n2n.students.stable_seed(seed, candidate.key())``), never from the worker or the completion order;
- every task runs with the same number of intra-op threads (``threads``, default 1) under every executor, the
  serial one included, because float sums in PyTorch's kernels depend on how the work is split between threads;
- results are returned in task order, whatever order they finished in.

A worker process that dies mid-task (killed, out of memory) has its task run again, up to ``retries`` times; a
task that raises fails the whole map with a one-line :class:`CompressorError` naming the task.

Latency is never measured beside tasks: ``map`` returns only when every task is done, and callers that time
models (the quantize pass, the pipeline's bench) call ``release()`` first, which stops the local worker processes
(and a Ray instance this executor started), so the timed process has the machine to itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from compressor.core.config import param, validate
from compressor.errors import CompressorError

KINDS = ("serial", "processes", "ray")

# Intra-op threads of the task running in this process (0: not inside a task). Executors set it around every task.
_TASK_THREADS = {"n": 0}


def task_threads() -> int:
    """The thread budget of the task running now (for ONNX Runtime sessions a task opens); 0 outside tasks."""
    return _TASK_THREADS["n"]


def set_task_threads(threads: int) -> int:
    """Give the current process ``threads`` intra-op threads for tasks (PyTorch, once imported, and
    :func:`task_threads`); returns PyTorch's previous setting (0 when not imported) for the serial executor."""
    _TASK_THREADS["n"] = threads
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    previous = torch.get_num_threads()
    if threads and previous != threads:
        torch.set_num_threads(threads)
    return previous


@dataclass
class ExecutorConfig:
    """Where independent candidate evaluations run (the recipe's ``executor`` section; ``--executor``/``--workers``).

    kind: serial (this process, the default), processes (a local pool of ``workers`` processes) or ray (a local
    Ray instance, or the cluster at ``address``: ``ray://host:port`` for Ray Client or ``host:port`` of a head
    node; an empty address uses ``RAY_ADDRESS`` when set). workers: parallel tasks (0 = one per ``threads``
    cores; on a Ray cluster the cluster's CPUs decide). threads: intra-op threads of every task, under every
    kind, so results are identical across kinds. retries: times a task is rerun after its worker process died.
    """

    kind: str = param("serial", choices=KINDS)
    workers: int = param(0, ge=0)
    threads: int = param(1, ge=1)
    address: str = ""
    retries: int = param(2, ge=0)

    def check(self) -> str | None:
        if self.address and self.kind != "ray":
            return f"executor.address is for kind ray, but kind is {self.kind}; set kind: ray or drop the address"
        if self.kind == "serial" and self.workers > 1:
            return "executor.workers > 1 needs kind processes or ray (serial runs one task at a time)"
        return None

    def worker_count(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 1) // self.threads)


class Executor(Protocol):
    """Maps ``fn(shared, task)`` over independent tasks; results come back in task order."""

    kind: str
    threads: int

    def put(self, obj: Any) -> Any:
        """Hand ``obj`` to the workers once; the returned reference is passed to :meth:`map` as ``shared``."""
        ...

    def map(self, fn: Callable[[Any, Any], Any], tasks: Sequence[Any], shared: Any = None,
            names: Sequence[str] | None = None) -> list[Any]: ...

    def release(self) -> None:
        """Stop idle local workers (the next ``map`` starts them again), so that nothing runs beside a timing."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Local:
    """The serial executor's reference to a shared object: the object itself."""

    obj: Any


def task_error(name: str, kind: str, message: str) -> CompressorError:
    """The one-line error a failed task ends the run with."""
    first = (message.strip().splitlines() or [""])[0][:300]
    return CompressorError(f"{name} failed ({kind} executor): {first}")


def exception_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def task_names(tasks: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    return list(names) if names is not None else [f"task {i}" for i in range(len(tasks))]


class SerialExecutor:
    """Runs tasks one after another in this process, each with ``threads`` intra-op threads (the default)."""

    kind = "serial"

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def put(self, obj: Any) -> Local:
        return Local(obj)

    def map(self, fn: Callable[[Any, Any], Any], tasks: Sequence[Any], shared: Any = None,
            names: Sequence[str] | None = None) -> list[Any]:
        names = task_names(tasks, names)
        obj = shared.obj if isinstance(shared, Local) else shared
        previous = set_task_threads(self.threads)
        try:
            out = []
            for name, task in zip(names, tasks):
                try:
                    out.append(fn(obj, task))
                except CompressorError as exc:
                    raise task_error(name, self.kind, str(exc)) from exc
                except Exception as exc:
                    raise task_error(name, self.kind, exception_line(exc)) from exc
            return out
        finally:
            set_task_threads(0)
            if previous:
                sys.modules["torch"].set_num_threads(previous)

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(config: ExecutorConfig | None = None) -> Executor:
    """The executor a recipe's ``executor`` section describes (validated here)."""
    config = validate(config or ExecutorConfig(), "executor")
    if config.kind == "serial":
        return SerialExecutor(config.threads)
    if config.kind == "processes":
        from compressor.core.process_pool import ProcessExecutor

        return ProcessExecutor(config.worker_count(), config.threads, config.retries)
    from compressor.core.ray_executor import RayExecutor

    return RayExecutor(config.address, config.workers, config.threads, config.retries)


def parse_executor_option(value: str) -> dict[str, str]:
    """``--executor`` on the command line: a kind, or a ``ray://host:port`` address (kind ray)."""
    if value.startswith("ray://"):
        return {"kind": "ray", "address": value}
    if value not in KINDS:
        raise CompressorError(f"--executor {value!r}: choose {' | '.join(KINDS)} or a ray://host:port address")
    return {"kind": value}
