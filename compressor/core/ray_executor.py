"""The ``ray`` executor: tasks on a local Ray instance or on a Ray cluster (``pip install 'compressor[ray]'``).

Shared objects go to Ray's object store once (``ray.put``); each task receives the reference inside a list, so
Ray does not resolve it per task, and a worker process deserialises each object once (numpy arrays are zero-copy
views of the store). Every task asks for ``threads`` CPUs and sets that many intra-op threads, so a local
instance started with ``workers × threads`` CPUs runs ``workers`` tasks at a time, and a cluster runs as many as
its CPUs allow. Ray itself reruns a task whose worker process died (``max_retries``); an exception raised by the
task is not retried and fails the run.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from compressor.core.executors import set_task_threads, task_error, task_names
from compressor.errors import CompressorError

KEEP_LOADED = 4
_LOADED: OrderedDict[str, Any] = OrderedDict()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CompressorError("executor ray needs Ray: pip install 'compressor[ray]' (or use --executor processes)") from None
    return ray


def _run(fn: Callable[[Any, Any], Any], box: list, task: Any, threads: int) -> Any:
    """A task on a Ray worker: fixed threads, the shared object deserialised once per worker process."""
    import ray

    shared = None
    if box:
        key = box[0].hex()
        if key not in _LOADED:
            _LOADED[key] = ray.get(box[0])
            while len(_LOADED) > KEEP_LOADED:
                _LOADED.popitem(last=False)
        shared = _LOADED[key]
    set_task_threads(threads)
    return fn(shared, task)


class _Shared:
    """A shared object in Ray's store, kept with the object itself so that it can be put again into a local
    instance started after ``release`` shut the first one down (its references died with it)."""

    def __init__(self, obj: Any, ref: Any, instance: int) -> None:
        self.obj, self.ref, self.instance = obj, ref, instance


class RayExecutor:
    """Tasks on Ray: ``address`` "" starts a local instance (or joins ``RAY_ADDRESS``), ``ray://host:port`` connects
    through Ray Client, ``host:port`` joins a head node directly."""

    kind = "ray"

    def __init__(self, address: str = "", workers: int = 0, threads: int = 1, retries: int = 2) -> None:
        self.address, self.workers, self.threads, self.retries = address, workers, threads, retries
        self._started_local = False
        self._remote = None
        self._instance = 0  # counts the local instances this executor shut down

    def _connect(self) -> Any:
        ray = _import_ray()
        if ray.is_initialized():
            return ray
        address = self.address or os.environ.get("RAY_ADDRESS", "")
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                cpus = (self.workers or max(1, (os.cpu_count() or 1) // self.threads)) * self.threads
                # "local": a new instance even when a cluster started by ``ray start`` runs on this machine.
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
                self._started_local = True
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "a local Ray instance"
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            # Ray Client puts the server's reason (a traceback) under a "...from server:" line: keep its last line.
            reason = f"{lines[0]} {lines[-1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
            raise CompressorError(f"executor ray: cannot connect to {where}: {reason}; check the address (ray://host:port "
                                  "or host:port), that the cluster runs, and that RAY_AUTH_MODE matches the cluster's "
                                  "(token or disabled)") from None
        return ray

    def put(self, obj: Any) -> _Shared:
        return _Shared(obj, self._connect().put(obj), self._instance)

    def map(self, fn: Callable[[Any, Any], Any], tasks: Sequence[Any], shared: Any = None,
            names: Sequence[str] | None = None) -> list[Any]:
        ray = self._connect()
        names = task_names(tasks, names)
        if self._remote is None:
            self._remote = ray.remote(_run)
        remote = self._remote.options(num_cpus=self.threads, max_retries=self.retries, retry_exceptions=False)
        if shared is not None and shared.instance != self._instance:
            shared.ref, shared.instance = ray.put(shared.obj), self._instance
        box = [] if shared is None else [shared.ref]
        refs = [remote.remote(fn, box, task, self.threads) for task in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                for ref in pending:
                    ray.cancel(ref, force=True)
                cause = exc.cause if exc.cause is not None else exc
                line = str(cause) if isinstance(cause, CompressorError) else f"{type(cause).__name__}: {cause}"
                raise task_error(names[index[done[0]]], self.kind, line) from exc  # the remote traceback, for --debug
            except ray.exceptions.RayError as exc:  # the worker died more than ``retries`` times, or the node did
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise CompressorError(f"{names[index[done[0]]]}: its Ray worker failed {self.retries + 1} times "
                                      f"({type(exc).__name__}); a killed worker usually means out of memory: lower --workers "
                                      "or the executor's threads") from None
        return ray.get(refs)

    def release(self) -> None:
        """Shut down a local Ray instance this executor started (its daemons would run beside a timing)."""
        if self._started_local:
            _import_ray().shutdown()
            self._started_local = False
            self._remote = None
            self._instance += 1

    def close(self) -> None:
        self.release()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
