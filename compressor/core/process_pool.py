"""The ``processes`` executor: a local pool of worker processes, and the shared files they read.

Shared objects are written once to a temporary folder: pickle protocol 5 with every large contiguous buffer
(numpy arrays: the data splits, calibration statistics) out of band, each buffer in its own file named by its
content hash, so an array shared again in a later round is not written again. Workers memory-map the buffers
(read-only) and keep the last few objects they loaded, so a task message carries only the function, a
reference and the task itself.

Workers are started by a ``forkserver`` that has imported PyTorch but never run it (``spawn`` where there is no
forkserver), so no worker is forked from a process that runs PyTorch's or ONNX Runtime's threads, and a
replacement worker starts quickly. Each holds one task at a time; the driver waits on every worker's pipe and
process sentinel, so a worker that dies mid-task is noticed at once, replaced, and its task (only that one) sent
again.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import os
import pickle
import shutil
import tempfile
import traceback
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from compressor.core.executors import exception_line, set_task_threads, task_error, task_names
from compressor.core.files import write_atomic
from compressor.errors import CompressorError

IN_BAND_BYTES = 1 << 16  # buffers smaller than this stay inside the pickle
KEEP_LOADED = 4  # shared objects a worker keeps deserialised


@dataclass(frozen=True)
class SharedFile:
    """Reference to an object written by :class:`SharedFiles`: its folder and token."""

    folder: str
    token: str


class SharedFiles:
    """Objects written once for worker processes, numpy buffers memory-mapped by the readers."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="compressor-shared-"))

    def put(self, obj: Any, what: str = "shared object") -> SharedFile:
        buffers: list[pickle.PickleBuffer] = []

        def out_of_band(buf: pickle.PickleBuffer) -> bool:
            if buf.raw().nbytes < IN_BAND_BYTES:
                return True  # in band
            buffers.append(buf)
            return False

        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise CompressorError(f"cannot send the {what} to worker processes ({exception_line(exc)}); "
                                  "a model defined in a file.py or in __main__ cannot be pickled, use --executor serial") from exc
        names = []
        for buf in buffers:
            raw = buf.raw()
            name = hashlib.sha256(raw).hexdigest()[:32] + ".buf"
            if not (self.folder / name).exists():
                write_atomic(self.folder / name, raw)
            names.append(name)
        index = pickle.dumps((names, data), protocol=5)
        token = hashlib.sha256(index).hexdigest()[:32]
        if not (self.folder / f"{token}.pkl").exists():
            write_atomic(self.folder / f"{token}.pkl", index)
        return SharedFile(str(self.folder), token)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


_LOADED: OrderedDict[str, Any] = OrderedDict()


def _map_file(path: Path) -> Any:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def load_shared(ref: SharedFile) -> Any:
    """The object behind ``ref``, deserialised once per worker (numpy arrays are read-only views of the files)."""
    if ref.token in _LOADED:
        _LOADED.move_to_end(ref.token)
        return _LOADED[ref.token]
    folder = Path(ref.folder)
    names, data = pickle.loads((folder / f"{ref.token}.pkl").read_bytes())
    obj = pickle.loads(data, buffers=[_map_file(folder / n) for n in names])
    _LOADED[ref.token] = obj
    while len(_LOADED) > KEEP_LOADED:
        _LOADED.popitem(last=False)
    return obj


def _worker(conn: Any, threads: int) -> None:
    """A worker process: fixed intra-op threads, then one task at a time until told to stop."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # Shared arrays are read-only memory maps; tasks only read them, so PyTorch's warning about that is noise.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, payload = message
        try:
            fn, ref, task = pickle.loads(payload)  # here, so that a function workers cannot import is a task error
            shared = load_shared(ref) if isinstance(ref, SharedFile) else ref
            set_task_threads(threads)
            result = (index, True, fn(shared, task))
            conn.send(result)
        except BaseException as exc:  # noqa: BLE001  (reported to the driver, which fails the run)
            line = str(exc) if isinstance(exc, CompressorError) else exception_line(exc)
            conn.send((index, False, (line, traceback.format_exc())))


def _context() -> Any:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "compressor.core.process_pool"])
    return context


class RemoteTraceback(Exception):
    """The worker's traceback of a failed task, chained to the one-line error (shown with ``--debug``)."""


class _Worker:
    def __init__(self, context: Any, threads: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, threads), daemon=True)
        self.process.start()
        child.close()
        self.task: int | None = None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class ProcessExecutor:
    """Up to ``workers`` tasks at once in worker processes with ``threads`` intra-op threads each."""

    kind = "processes"

    def __init__(self, workers: int, threads: int = 1, retries: int = 2) -> None:
        self.workers, self.threads, self.retries = workers, threads, retries
        self._context = _context()
        self._pool: list[_Worker] = []
        self._files: SharedFiles | None = None

    def put(self, obj: Any) -> SharedFile:
        if self._files is None:
            self._files = SharedFiles()
        return self._files.put(obj, type(obj).__name__)

    def map(self, fn: Callable[[Any, Any], Any], tasks: Sequence[Any], shared: Any = None,
            names: Sequence[str] | None = None) -> list[Any]:
        names = task_names(tasks, names)
        results: list[Any] = [None] * len(tasks)
        attempts = [0] * len(tasks)
        queue = deque(range(len(tasks)))

        def died(worker: _Worker) -> None:
            """The worker's process is gone: replace it and queue its task again, a bounded number of times."""
            index = worker.task
            self._pool.remove(worker)
            worker.stop(kill=True)
            attempts[index] += 1
            if attempts[index] > self.retries:
                raise CompressorError(
                    f"{names[index]}: its worker process died {attempts[index]} times (exit code "
                    f"{worker.process.exitcode}); a killed worker usually means out of memory, lower --workers")
            queue.appendleft(index)

        try:
            while queue or any(w.task is not None for w in self._pool):
                while queue and (len(self._pool) < self.workers or any(w.task is None for w in self._pool)):
                    worker = next((w for w in self._pool if w.task is None), None)
                    if worker is None:
                        worker = _Worker(self._context, self.threads)
                        self._pool.append(worker)
                    worker.task = queue.popleft()
                    try:
                        payload = pickle.dumps((fn, shared, tasks[worker.task]), protocol=5)
                    except (pickle.PicklingError, AttributeError, TypeError) as exc:
                        raise task_error(names[worker.task], self.kind, f"cannot be sent: {exception_line(exc)}") from exc
                    try:
                        worker.conn.send((worker.task, payload))
                    except OSError:
                        died(worker)
                busy = [w for w in self._pool if w.task is not None]
                ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
                for worker in busy:
                    if worker.conn not in ready and worker.process.sentinel not in ready:
                        continue
                    try:
                        index, ok, result = worker.conn.recv()
                    except (EOFError, OSError):
                        died(worker)
                        continue
                    worker.task = None
                    if not ok:
                        raise task_error(names[index], self.kind, result[0]) from RemoteTraceback(result[1])
                    results[index] = result
        except BaseException:
            self.release(kill=True)  # workers may be mid-task; the run is failing anyway
            raise
        return results

    def release(self, kill: bool = False) -> None:
        for worker in self._pool:
            worker.stop(kill=kill or worker.task is not None)
        self._pool = []

    def close(self) -> None:
        self.release()
        if self._files is not None:
            self._files.close()
            self._files = None

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
