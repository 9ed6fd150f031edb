"""Bad and unusual inputs (issue 17, section 3) as data, shared by tests/test_bad_inputs.py (in-process, per
group) and benchmarks/bad_inputs.py (each case in a fresh ``python -m compressor`` process, with a count).

A case builds its files under an empty folder (its working directory) and returns the command line. A case
with ``code=2`` (or 3, a gate miss) passes when the command exits so with exactly one ``error:`` line containing
``needle`` (the key, flag or file to fix), without ``absent`` (a misleading hint), and leaves the folder exactly
as it was built (no output folder, no half-written file). A case with ``code=0`` must work; ``check`` then
inspects the result."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEACHER = str(ROOT / "demo" / "cifar10_resnet20.pt")
DATA = str(ROOT / "demo" / "cifar10-demo.tar.gz")


@dataclass
class Case:
    group: str
    name: str
    build: Callable[[Path], list[str]]  # writes the case's files under the folder; returns the CLI arguments
    needle: str = ""
    code: int = 2
    absent: str | None = None
    env: Callable[[Path], dict[str, str]] | None = None
    check: Callable[[Path], bool] | None = None  # for code=0 cases: did it do the right thing?
    then: Callable[[Path], None] | None = None  # run once, apply this change, run again; the second run is judged

    @property
    def id(self) -> str:
        return f"{self.group}:{self.name}"


def _compress(tmp: Path, *extra: str, weights: str = TEACHER, data: str = DATA, out: str | None = None) -> list[str]:
    return ["compress", "--model", "cifar_resnet20", "--weights", weights, "--data", data,
            "--out", str(tmp / "out") if out is None else out, "--no-bench", "--quiet", *extra]


def _run(tmp: Path, pass_name: str, *extra: str, data: str = DATA) -> list[str]:
    return ["run", pass_name, "--model", "cifar_resnet20", "--weights", TEACHER, "--data", data,
            "--out", str(tmp / "out"), "--no-bench", "--quiet", *extra]


def _recipe(tmp: Path, sections: dict | None = None, text: str = "") -> list[str]:
    """A recipe of the demo model and data with ``sections`` merged in (or raw YAML ``text`` appended)."""
    import yaml

    recipe = {"model": {"name": "cifar_resnet20", "weights": TEACHER}, "data": {"path": DATA}, "passes": ["fold_bn"]}
    for key, value in (sections or {}).items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) and key in recipe else value
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False) + text)
    return ["compress", "--recipe", str(path), "--out", str(tmp / "out"), "--no-bench", "--quiet"]


# ----------------------------------------------------------------------------------------------------- data sets

def _npz(tmp: Path, name: str = "d.npz", *, pickle_ok: bool = False, **override) -> str:
    """A small valid npz (10 classes, 32×32 RGB) with arrays replaced or removed (value None) by ``override``."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        "train_labels": np.arange(40) % 10,
        "test_images": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        "test_labels": np.arange(20) % 10,
    }
    arrays.update(override)
    path = tmp / name
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=pickle_ok, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def _png(size: tuple[int, int] = (32, 32), seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, classes: int = 10, per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (d / f"{i}.png").write_bytes(_png(seed=c * 10 + i))
    return root


def _bomb(tmp: Path) -> list[str]:
    root = _folder(tmp / "ds")
    # A header claiming 30000×30000 pixels: Pillow refuses it as a decompression bomb before decoding.
    (root / "train" / "c0" / "bomb.ppm").write_bytes(b"P6\n30000 30000\n255\n" + bytes(64))
    return _compress(tmp, data=str(root))


def _tar(tmp: Path, names: list[str]) -> list[str]:
    path = tmp / "d.tar"
    with tarfile.open(path, "w") as tar:
        for i, name in enumerate(names):
            blob = _png(seed=i)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return _compress(tmp, data=str(path))


def _tar_names(root: str) -> list[str]:
    return [f"{root}/{s}/c{c}/{i}.png" for s in ("train", "test") for c in range(10) for i in range(2)]


def _nine_classes(tmp: Path) -> list[str]:
    return _compress(tmp, data=str(_folder(tmp / "ds", classes=9)))


# ------------------------------------------------------------------------------------------------- model files

def _random_bytes(tmp: Path, *extra: str) -> list[str]:
    path = tmp / "w.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return ["compress", "--data", DATA, "--weights", str(path), "--out", str(tmp / "out"), "--no-bench", *extra]


def _stage_file(tmp: Path, **payload) -> list[str]:
    import torch

    from compressor.core.serialize import FORMAT, save_model
    from compressor.core.zoo import ZOO

    good = tmp / "good.pt"
    save_model(ZOO["cifar_resnet20"](), good)
    base = torch.load(good, weights_only=True)
    good.unlink()
    base.update({"format": FORMAT, **payload})
    for key in [k for k, v in payload.items() if v is None]:
        del base[key]
    path = tmp / "stage.pt"
    torch.save(base, path)
    return ["compress", "--data", DATA, "--weights", str(path), "--out", str(tmp / "out"), "--no-bench"]


def _crafted_tree(tmp: Path, edit: Callable[[dict], None]) -> list[str]:
    from compressor.core.serialize import _describe
    from compressor.core.zoo import ZOO

    tree = _describe(ZOO["cifar_resnet20"]())
    edit(tree)
    return _stage_file(tmp, tree=json.dumps(tree))


def _factory(tmp: Path, body: str, top: str = "") -> list[str]:
    (tmp / "net.py").write_text(f"import sys\nimport torch.nn as nn\n{top}\ndef build():\n    {body}\n")
    return ["compress", "--model", f"{tmp / 'net.py'}:build", "--data", DATA, "--out", str(tmp / "out"),
            "--no-bench"]


def _plain_pickle(tmp: Path) -> list[str]:
    path = tmp / "w.pkl"
    path.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    return _compress(tmp, weights=str(path))


# -------------------------------------------------------------------------------------------------------- bench

def _dynamic_onnx(tmp: Path, static: bool = False) -> str:
    """A one-conv classifier whose input is (batch, 3, H, W) with symbolic H and W (or static 32×32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    dims = ["batch", 3, 32, 32] if static else ["batch", 3, "h", "w"]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
         helper.make_node("Flatten", ["g"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp / ("static.onnx" if static else "dyn.onnx")
    onnx.save(model, path)
    return str(path)


FAST = ["--duration", "0.01", "--warmup", "0", "--iterations", "1", "--batch", "1"]


def _bench(tmp: Path, *extra: str, static: bool = True) -> list[str]:
    return ["bench", _dynamic_onnx(tmp, static), *extra]


def _bench_json_missing_folder(tmp: Path) -> list[str]:
    return _bench(tmp, *FAST, "--json", str(tmp / "new" / "dir" / "b.json"))


# -------------------------------------------------------------------------------------------------------- check

def _report(tmp: Path, content, *flags: str) -> list[str]:
    path = tmp / "report.json"
    path.write_text(json.dumps(content))
    return ["check", str(path), *(flags or ("--max-accuracy-drop", "1"))]


def _stage(**kw) -> dict:
    return {"stage": "teacher", "kind": "teacher", "top1": 90.0, "onnx_path": "m.onnx", "onnx_size_mb": 1.0, **kw}


# -------------------------------------------------------------------------------------------------------- cache

def _cache_is_file(tmp: Path) -> list[str]:
    (tmp / "cachefile").write_text("x")
    return _compress(tmp, data=str(_folder(tmp / "ds")))


def _symlink_cache_followed(tmp: Path) -> list[str]:
    """An ImageFolder whose class folders are symlinks; the run fails after decoding (a 20-image train split is
    too small), which caches the decoded data. ``_add_linked_image`` then adds an image inside a linked folder: the
    second run must decode again and report 21 images."""
    real = _folder(tmp / "real")
    ds = tmp / "ds"
    for split in ("train", "test"):
        (ds / split).mkdir(parents=True)
        for c in range(10):
            (ds / split / f"c{c}").symlink_to(real / split / f"c{c}", target_is_directory=True)
    return _compress(tmp, data=str(ds))


def _add_linked_image(tmp: Path) -> None:
    (tmp / "real" / "train" / "c0" / "new.png").write_bytes(_png(seed=99))


def _set(tmp: Path, pass_name: str, *sets: str) -> list[str]:
    return _run(tmp, pass_name, *[a for s in sets for a in ("--set", s)])


LONG = "a" * 300
STAGES = {"stages": [_stage()], "deployed": "m.onnx"}

CASES: list[Case] = [
    # ---- recipe, YAML and pass parameters
    Case("recipe", "data.validation: -5", lambda t: _recipe(t, {"data": {"validation": -5}}), "data.validation"),
    Case("recipe", "prune finetune_steps: -3", lambda t: _recipe(t, {"passes": [{"prune": {"finetune_steps": -3}}]}),
         "finetune_steps"),
    Case("recipe", "prune final_finetune_steps: -10",
         lambda t: _recipe(t, {"passes": [{"prune": {"final_finetune_steps": -10}}]}), "final_finetune_steps"),
    Case("recipe", "prune batch_size: 0", lambda t: _recipe(t, {"passes": [{"prune": {"batch_size": 0}}]}),
         "batch_size"),
    Case("recipe", "bench duration -1, warmup -5", lambda t: _recipe(t, {"bench": {"duration": -1, "warmup": -5}}),
         "bench."),
    Case("recipe", "bench batches [0]", lambda t: _recipe(t, {"bench": {"batches": [0]}}), "bench.batches[0]"),
    Case("recipe", "quantize max_evals: 0", lambda t: _recipe(t, {"passes": [{"quantize": {"max_evals": 0}}]}),
         "max_evals"),
    Case("recipe", "seed: -1", lambda t: _recipe(t, {"seed": -1}), "seed"),
    Case("recipe", "--seed -1", lambda t: _compress(t, "--seed", "-1"), "--seed"),
    Case("recipe", "NaN budget in the recipe", lambda t: _recipe(t, {"budget": {"max_accuracy_drop": float("nan")}}),
         "max_accuracy_drop"),
    Case("recipe", "--max-accuracy-drop nan", lambda t: _compress(t, "--max-accuracy-drop", "nan"),
         "--max-accuracy-drop"),
    Case("recipe", "data.reference_per_class: -1", lambda t: _recipe(t, {"data": {"reference_per_class": -1}}),
         "data.reference_per_class"),
    Case("recipe", "duplicate top-level key", lambda t: _recipe(t, text="model: {name: cifar_resnet20}\n"),
         "duplicate key 'model'"),
    Case("recipe", "duplicate nested key", lambda t: _recipe(t, text="bench: {threads: 1, threads: 2}\n"),
         "duplicate key 'threads'"),
    Case("recipe", "run --set 'step=['", lambda t: _set(t, "prune", "step=["), "--set"),
    Case("recipe", "run --set unknown key", lambda t: _set(t, "prune", "stpe=2"), "--set", absent="passes[0]"),
    Case("recipe", "run --set out of range", lambda t: _set(t, "prune", "batch_size=0"), "--set: batch_size",
         absent="passes[0]"),
    Case("recipe", "run on a small train split names --validation", lambda t: _run(t, "fold_bn", data=_npz(t)),
         "--validation", absent="in the recipe"),
    Case("recipe", "run --min-speedup with --no-bench", lambda t: _run(t, "fold_bn", "--min-speedup", "1.5"),
         "--no-bench"),
    Case("recipe", "run --input-shape 1,32,32 names --mean", lambda t: _run(t, "fold_bn", "--input-shape", "1,32,32"),
         "--mean"),
    # ---- data: npz, images, tar
    Case("data", "npz labels out of range", lambda t: _compress(t, data=_npz(t, train_labels=np.arange(40) % 11)),
         "train_labels"),
    Case("data", "npz negative labels", lambda t: _compress(t, data=_npz(t, test_labels=np.arange(20) % 10 - 1)),
         "test_labels"),
    Case("data", "npz float labels", lambda t: _compress(t, data=_npz(t, train_labels=np.arange(40) % 10 + 0.5)),
         "train_labels"),
    Case("data", "npz string labels", lambda t: _compress(t, data=_npz(t, train_labels=np.array(["cat"] * 40))),
         "train_labels"),
    Case("data", "npz 2-D labels", lambda t: _compress(t, data=_npz(t, train_labels=np.zeros((40, 10), np.int64))),
         "train_labels"),
    Case("data", "npz object labels", lambda t: _compress(
        t, data=_npz(t, pickle_ok=True, train_labels=np.array([{"a": 1}] * 40, dtype=object))), "train_labels"),
    Case("data", "npz missing labels key", lambda t: _compress(t, data=_npz(t, train_labels=None)), "train_labels"),
    Case("data", "npz without a test split", lambda t: _compress(t, data=_npz(t, test_images=None, test_labels=None)),
         "test_images"),
    Case("data", "1-channel images", lambda t: _compress(t, data=_npz(
        t, train_images=np.zeros((40, 32, 32, 1), np.uint8), test_images=np.zeros((20, 32, 32, 1), np.uint8))),
         "channel"),
    Case("data", "train and test of different sizes", lambda t: _compress(t, data=_npz(
        t, train_images=np.zeros((40, 28, 28, 3), np.uint8))), "train images are 28x28"),
    Case("data", "labels out of range with prune", lambda t: _run(
        t, "prune", data=_npz(t, train_labels=np.arange(40) % 12)), "train_labels"),
    Case("data", "ImageFolder with 9 classes for a 10-class model", _nine_classes, "9 classes"),
    Case("data", "image header claiming 30000x30000", _bomb, "bomb.ppm"),
    Case("data", "tar member outside the archive root", lambda t: _tar(t, _tar_names("ds") + ["../x/train/c0/evil.png"]),
         "../x/train/c0/evil.png"),
    Case("data", "tar with splits under two folders", lambda t: _tar(t, _tar_names("a") + _tar_names("b")),
         "two folders"),
    # ---- paths
    Case("paths", "--out ''", lambda t: _compress(t, out=""), "--out"),
    Case("paths", "--out file/sub", lambda t: (t / "f").write_text("x") and _compress(t, out=str(t / "f" / "sub")),
         "--out"),
    Case("paths", "--out with a 300-character name", lambda t: _compress(t, out=str(t / LONG)), "--out"),
    Case("paths", "--out longer than PATH_MAX", lambda t: _compress(t, out=str(t / "/".join(["b" * 200] * 25))),
         "--out"),
    Case("paths", "--data with a 300-character name", lambda t: _compress(t, data=str(t / LONG)), "--data"),
    Case("paths", "--weights with a 300-character name", lambda t: _compress(t, weights=str(t / LONG)), "--weights"),
    Case("paths", "--recipe with a 300-character name",
         lambda t: ["compress", "--recipe", str(t / LONG), "--out", str(t / "out")], "--recipe"),
    Case("paths", "data.path with a 300-character name in a recipe", lambda t: _recipe(t, {"data": {"path": str(t / LONG)}}),
         "too long"),
    # ---- model files and factories
    Case("model", "random bytes as --weights", _random_bytes, "w.pt", absent="pickle"),
    Case("model", "random bytes with --allow-pickle", lambda t: _random_bytes(t, "--allow-pickle"), "w.pt"),
    Case("model", "a plain (non-torch) pickle", _plain_pickle, "w.pkl", absent="--allow-pickle"),
    Case("model", "stage file with a broken tree", lambda t: _stage_file(t, tree="{not json"), "stage.pt"),
    Case("model", "stage file without tensors", lambda t: _stage_file(t, state=None), "stage.pt"),
    Case("model", "stage file naming a missing torch.nn class", lambda t: _crafted_tree(
        t, lambda d: d.update({"class": "torch.nn.NoSuchLayer"})), "stage.pt"),
    Case("model", "stage file whose tree disagrees with its tensors", lambda t: _crafted_tree(
        t, lambda d: d["children"].pop("linear")), "stage.pt"),
    Case("model", "stage file with a malformed tree", lambda t: _crafted_tree(t, lambda d: d.update({"attrs": [1, 2]})),
         "stage.pt"),
    Case("model", "factory calling sys.exit(3)", lambda t: _factory(t, "sys.exit(3)"), "exited (SystemExit 3)"),
    Case("model", "model file calling sys.exit on import",
         lambda t: _factory(t, "return nn.Linear(2, 2)", top="sys.exit('bye')"), "SystemExit"),
    Case("model", "--weights is a folder", lambda t: (t / "wdir").mkdir() or _compress(t, weights=str(t / "wdir")),
         "folder"),
    # ---- bench
    Case("bench", "dynamic HxW without --input-shape", lambda t: _bench(t, *FAST, static=False), "--input-shape"),
    Case("bench", "dynamic HxW with --input-shape works", lambda t: _bench(
        t, *FAST, "--input-shape", "3,24,24", "--json", str(t / "b.json"), static=False), code=0,
         check=lambda t: json.loads((t / "b.json").read_text())["input_shape"] == [3, 24, 24]),
    Case("bench", "--input-shape against static dims", lambda t: _bench(t, *FAST, "--input-shape", "3,64,64"),
         "--input-shape"),
    Case("bench", "--batch 0", lambda t: _bench(t, "--batch", "0"), "--batch"),
    Case("bench", "--duration -1", lambda t: _bench(t, "--duration", "-1"), "--duration"),
    Case("bench", "--duration nan", lambda t: _bench(t, "--duration", "nan"), "--duration"),
    Case("bench", "--duration 0 --iterations 0", lambda t: _bench(t, "--duration", "0", "--iterations", "0"),
         "--iterations"),
    Case("bench", "--threads 0", lambda t: _bench(t, "--threads", "0"), "--threads"),
    Case("bench", "--json into a missing folder works", _bench_json_missing_folder, code=0,
         check=lambda t: (t / "new" / "dir" / "b.json").is_file()),
    Case("bench", "--json under a file", lambda t: (t / "f").write_text("x") and _bench(
        t, *FAST, "--json", str(t / "f" / "b.json")), "--json"),
    Case("bench", "README.md as the artifact", lambda t: ["bench", str(ROOT / "README.md"), "--model", "cifar_resnet20"],
         "README.md", absent="--allow-pickle"),
    # ---- check
    Case("check", "[]", lambda t: _report(t, []), "report.json"),
    Case("check", "{}", lambda t: _report(t, {}), "stages"),
    Case("check", "empty stages", lambda t: _report(t, {"stages": []}), "stages"),
    Case("check", "top1: high", lambda t: _report(t, {"stages": [_stage(top1="high")], "deployed": "m.onnx"}),
         "stages[0].top1"),
    Case("check", "a directory", lambda t: ["check", str(t), "--max-size-mb", "1"], "folder"),
    Case("check", "--max-accuracy-drop nan", lambda t: _report(t, STAGES, "--max-accuracy-drop", "nan"),
         "--max-accuracy-drop"),
    Case("check", "a teacher row without top1 misses the limit", lambda t: _report(
        t, {"stages": [_stage(top1=None)], "deployed": "m.onnx"}), "max_accuracy_drop", code=3),
    Case("check", "--min-speedup -1", lambda t: _report(t, STAGES, "--min-speedup", "-1"), "--min-speedup"),
    Case("check", "a hand-edited headline speed-up", lambda t: _report(
        t, {**STAGES, "headline": {"paired_rounds": 5, "vs_teacher": {"batch1_speedup": "fast"}}}, "--min-speedup", "1.2"),
         "headline is malformed"),
    # ---- data cache
    Case("cache", "COMPRESSOR_CACHE is a file", _cache_is_file, "COMPRESSOR_CACHE",
         env=lambda t: {"COMPRESSOR_CACHE": str(t / "cachefile")}),
    Case("cache", "symlinked class folder changes", _symlink_cache_followed, "21 images", then=_add_linked_image),
]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder`` (symlinks not followed) with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def judge(case: Case, code: int, stderr: str, before: dict, after: dict, folder: Path) -> str | None:
    """None when the case was handled as it must be, else what went wrong."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if code != case.code:
        return f"exit {code}, expected {case.code}: {lines[-1] if lines else '(no stderr)'}"
    if case.code == 0:
        try:
            right = case.check is None or case.check(folder)
        except Exception as exc:  # the result is missing or malformed
            right = exc
        return None if right is True else f"ran, but the result is wrong ({right!r})"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"stderr is not one 'error:' line: {stderr.strip()[:300]!r}"
    if case.needle not in lines[0]:
        return f"the error does not name {case.needle!r}: {lines[0]}"
    if case.absent and case.absent in lines[0]:
        return f"the error says {case.absent!r}, which misleads: {lines[0]}"
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        return f"files left or changed: {sorted({c[0] for c in changed})[:3]}"
    return None
