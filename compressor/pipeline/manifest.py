"""The run manifest (``manifest.json`` in the output folder): what a run read and wrote, by content hash.

It makes three promises checkable:

* ``--resume`` reuses a stage only when everything it was computed from is unchanged (the code, the weights file,
  the model's source, the data, the recipe up to that stage, and the model the stage started from) and every file
  it wrote still has the sha256 recorded here. Anything else is re-run, with one line saying why.
* A run never mixes with an earlier one: a non-empty output folder is refused unless ``--resume`` or ``--force``
  is given, and ``--force`` deletes only what compressor owns there: the files the manifest lists and the names
  compressor writes (:func:`owned_name`). Files it did not write are kept and named.
* After a run the manifest lists exactly the files compressor wrote in the folder.

The manifest is rewritten (atomically) at the start of a run, after every stage and at the end, so a run killed at
any point leaves one that describes what is on disk.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.core.files import write_atomic
from compressor.errors import CompressorError

FORMAT = "compressor-manifest/1"
NAME = "manifest.json"
# Everything compressor writes at the top of an output folder, whichever passes ran.
OUTPUT_NAMES = frozenset({
    NAME, "model.onnx", "model_int8.onnx", "model.engine", "model.xml", "model.bin", "report.json", "report.md", "accuracy_latency.png",
    "quantize_fp32.onnx", "quantized_int8.onnx", "quantize_search.png",
})
_TEMPORARY = re.compile(r"((stages|n2n)/)?tmp\w+\.tmp(\.\w+)?")  # an atomic write interrupted by a kill
_OWNED = re.compile(
    r"stages/\d{2}_\w+\.(pt|onnx)"  # stage models and their ONNX exports
    r"|n2n/n2n_(search|policy)\.pt|n2n/n2n_rewards\.png"  # the N2N pass's search state, policy and plot
    rf"|{_TEMPORARY.pattern}"
)
# Resume compares a stage's inputs in this order and names the first that differs.
INPUT_REASONS = {
    "code": "the code version changed",
    "weights": "the weights file changed",
    "model": "the model's source changed",
    "data": "the data changed",
    "recipe": "the recipe changed up to this stage",
    "input": "the model it starts from changed",
}


def owned_name(rel: str) -> bool:
    """Whether a path (relative to the output folder, with ``/``) is one compressor writes."""
    return rel in OUTPUT_NAMES or _OWNED.fullmatch(rel) is not None


def temporary(rel: str) -> bool:
    """Whether a path is a temporary file that an interrupted atomic write left behind (never worth keeping)."""
    return _TEMPORARY.fullmatch(rel) is not None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(value: Any) -> str:
    """Hash of a canonical JSON rendering (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def data_digest(path: str | Path) -> str:
    """sha256 of a data file; for a folder, of every file's relative path, size and content hash in sorted order
    (content, not modification times: a file copied over another with its time preserved is still seen)."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    entries = []
    for root, dirs, files in os.walk(path, followlinks=True):  # the loader follows symlinked class folders too
        dirs.sort()
        entries += [Path(root, f) for f in files]
    for f in sorted(entries, key=lambda p: p.relative_to(path).as_posix()):
        h.update(f"{f.relative_to(path).as_posix()}\0{f.stat().st_size}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def git_commit(folder: Path) -> str | None:
    """The checked-out commit when the package runs from a git checkout and git is installed; else None."""
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip() if done.returncode == 0 else ""
    return commit or None


def code_version() -> dict[str, str | None]:
    """compressor's version, a hash of its source files (so uncommitted edits count), the git commit when there is
    one, and the versions of the libraries that compute the artifacts."""
    import compressor

    root = Path(compressor.__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".json") and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    libs = {}
    for lib in ("torch", "onnx", "onnxruntime", "numpy", "xgboost"):
        try:
            libs[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            libs[lib] = None
    return {"compressor": compressor.__version__, "source_sha256": h.hexdigest(), "git_commit": git_commit(root), **libs}


def module_source_digest(module_name: str | None) -> str:
    """sha256 of the file a user's model factory came from ("builtin" for the zoo, covered by the code hash)."""
    module = sys.modules.get(module_name or "")
    source = getattr(module, "__file__", None)
    return sha256_file(source) if source and Path(source).is_file() else "builtin"


def list_files(out_dir: Path) -> list[str]:
    """Every file below ``out_dir`` (symlinks included, not followed), relative and with ``/``."""
    found = []
    for root, _, files in os.walk(out_dir):
        found += [Path(root, f).relative_to(out_dir).as_posix() for f in files]
    return sorted(found)


@dataclass
class StageEntry:
    """One completed stage: the hashes of what it was computed from, the digest of the model it produced and the
    sha256 of every file it wrote."""

    name: str
    inputs: dict[str, str]
    output: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def why_not_reusable(self, name: str, inputs: dict[str, str], out_dir: Path) -> str | None:
        """None when this earlier run of the stage can stand in for running ``name`` on ``inputs``, else why not."""
        if self.name != name:
            return f"the earlier run's stage here was {self.name}"
        for key, reason in INPUT_REASONS.items():
            if self.inputs.get(key) != inputs.get(key):
                return reason
        for rel, sha in self.files.items():
            path = out_dir / rel
            if not path.is_file():
                return f"{rel} is missing"
            if sha256_file(path) != sha:
                return f"{rel} does not match the manifest"
        return None


@dataclass
class Manifest:
    code: dict[str, Any]
    inputs: dict[str, Any]  # weights / model / data: path and sha256; recipe: the parsed recipe
    stages: list[StageEntry] = field(default_factory=list)
    running: StageEntry | None = None  # the stage in progress (its inputs), while a run is under way
    outputs: dict[str, str] = field(default_factory=dict)  # files outside the stages: teacher export, finals, report
    files: dict[str, str] = field(default_factory=dict)  # every file listed above -> sha256, kept up to date by save
    complete: bool = False
    format: str = FORMAT

    def owned(self) -> set[str]:
        return {NAME, *self.outputs, *(f for s in self.stages for f in s.files)}

    def add(self, out_dir: Path, rels: Iterable[str]) -> None:
        """Hash files this run wrote outside its stages and list them."""
        self.outputs.update({rel: sha256_file(out_dir / rel) for rel in rels})

    def save(self, out_dir: Path) -> None:
        self.files = dict(sorted({**self.outputs, **{f: h for s in self.stages for f, h in s.files.items()}}.items()))
        write_atomic(out_dir / NAME, json.dumps(asdict(self), indent=1, sort_keys=True))

    @classmethod
    def load(cls, out_dir: Path) -> Manifest | None:
        path = out_dir / NAME
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            if d.get("format") != FORMAT:
                raise ValueError(d.get("format"))
            stages = [StageEntry(**s) for s in d.pop("stages")]
            running = d.pop("running")
            return cls(stages=stages, running=None if running is None else StageEntry(**running), **d)
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
            raise CompressorError(f"{path} is not a compressor manifest; move it away, or pass --force to delete "
                                  "compressor's files there and run again") from None


def snapshot(out_dir: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime, size) of every file, to find what a stage wrote (an atomic write always makes a new inode)."""
    out = {}
    for rel in list_files(out_dir):
        st = (out_dir / rel).lstat()
        out[rel] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def written_since(before: dict[str, tuple[int, int, int]], out_dir: Path) -> list[str]:
    return sorted(rel for rel, sig in snapshot(out_dir).items() if before.get(rel) != sig and rel != NAME)


def remove(out_dir: Path, rels: Iterable[str]) -> None:
    """Delete these files (and the owned sub-folders they leave empty)."""
    for rel in rels:
        (out_dir / rel).unlink(missing_ok=True)
    for sub in ("stages", "n2n"):
        d = out_dir / sub
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def claim(out_dir: Path, resume: bool, force: bool, log: Callable[[str], None]) -> tuple[Manifest | None, set[str]]:
    """Decide what an output folder may hold before a run writes to it.

    Returns the previous run's manifest (for ``resume``) and the set of files compressor did not write, which are
    left alone. An empty or missing folder is simply used. Otherwise, without ``resume`` or ``force`` the run is
    refused; ``force`` deletes what compressor owns; ``resume`` needs a manifest to verify against.
    """
    if resume and force:
        raise CompressorError("--resume and --force exclude each other: --resume reuses verified stages, --force "
                              "deletes compressor's earlier files; pass one")
    files = list_files(out_dir) if out_dir.is_dir() else []
    if not files:
        return None, set()
    prev = None if force and not resume and _unreadable(out_dir) else Manifest.load(out_dir)
    owned = (prev.owned() if prev else set()) | {f for f in files if owned_name(f)}
    foreign = {f for f in files if f not in owned}
    if resume:
        if prev is None:
            raise CompressorError(f"--resume: {out_dir} has no {NAME}, so nothing in it can be verified; pass --force "
                                  "to delete compressor's files there and run again, or choose an empty --out")
        return prev, foreign
    if force:
        remove(out_dir, sorted(owned & set(files)))
        if foreign:
            log(f"--force kept {len(foreign)} file(s) in {out_dir} that compressor did not write: {_some(foreign)}")
        return None, foreign
    what = "an earlier run's results" if owned else f"{len(foreign)} file(s) compressor did not write: {_some(foreign)}"
    if prev is not None:
        hint = ("pass --resume to reuse its verified stages or --force to delete compressor's files there (keeping "
                "any others) and run again")
    elif owned:
        hint = (f"it has no {NAME} to verify them, so --resume cannot reuse them; pass --force to delete compressor's "
                "files there (keeping any others) and run again, or choose an empty --out")
    else:
        hint = ("choose an empty --out, or pass --force to run there anyway (files compressor did not write are kept; "
                f"--resume needs a {NAME})")
    raise CompressorError(f"output folder {out_dir} is not empty ({what}); {hint}")


def _unreadable(out_dir: Path) -> bool:
    try:
        Manifest.load(out_dir)
        return False
    except CompressorError:
        return True


def _some(names: Iterable[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
