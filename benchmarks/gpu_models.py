"""Whole-model check of the fused INT8 kernels on a GPU with the real teacher weights; run by gpu_check.sh.

For each model (each in its own try, so an exception loses only that model; the JSON is rewritten after every
phase):
  - fold BatchNorm, calibrate activation scales on real CIFAR-10 training images (the repository's demo subset),
    build the Int8Model;
  - parity: the Int8Model on CUDA against the same Int8Model on the CPU twins, on the first --parity-images test
    images (the kernels are bit-exact twins, so only the float tail, pooling and the classifier, may differ);
  - top-1 on the test images of the float model (FP32 on the GPU) and of the Int8Model on CUDA, and how often the
    two agree (the full 10,000-image test split when gpu_payload/ carries it, else the demo subset's test split);
  - latency of one synchronous inference at batch 1 and 256 for torch FP32, FP16, FP16 replayed as a CUDA graph,
    and the Int8Model on the CUDA kernels: CUDA events around one call, host dispatch included (as a caller sees
    it); median and fastest of the samples.
With --device cpu it runs everything but the GPU parts (a check of this script on a machine without a GPU).

Usage: python -u benchmarks/gpu_models.py --out models.json [--teachers DIR] [--test-data TAR] [--budget-s 180]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from compressor.core.data import Preprocess, load_dataset
from compressor.core.zoo import ZOO
from compressor.graph.fusion import fold_batchnorm
from compressor.runtime import kernels
from compressor.runtime.gpu_backends import make_torch_cuda_runner

ROOT = Path(__file__).resolve().parent.parent
TEACHER_FILES = {"cifar_resnet56": "cifar10_resnet56.pt", "cifar_mobilenetv2": "cifar10_mobilenetv2_w0.5.pt"}
BACKENDS = ("torch-fp32", "torch-fp16", "torch-fp16-graph", "torch-int8")


def default_teachers() -> Path:
    payload = ROOT / "gpu_payload" / "teachers"
    return payload if payload.is_dir() else ROOT.parent / "shared" / "data" / "teachers"


def default_test_data() -> Path:
    payload = ROOT / "gpu_payload" / "cifar10-test.tar.gz"
    return payload if payload.is_file() else ROOT / "demo" / "cifar10-demo.tar.gz"


class Results:
    """The JSON document, rewritten in full (through a temporary file) every time something is added."""

    def __init__(self, path: Path, header: dict):
        self.path, self.doc = path, {**header, "models": {}}
        self.write()

    def model(self, name: str) -> dict:
        return self.doc["models"].setdefault(name, {"status": "running"})

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2))
        os.replace(tmp, self.path)


def measure(run, budget_s: float, min_samples: int = 10, max_samples: int = 200) -> dict:
    """Median and fastest of `run()`'s milliseconds, after three warm-up calls."""
    for _ in range(3):
        run()
    samples, t0 = [], time.perf_counter()
    while len(samples) < max_samples and (len(samples) < min_samples or time.perf_counter() - t0 < budget_s):
        samples.append(run())
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "samples": len(samples)}


@torch.no_grad()
def predict(model, images: torch.Tensor, device: str, batch: int = 500) -> torch.Tensor:
    """Logits on the CPU, computed in batches on `device`."""
    return torch.cat([model(images[i : i + batch].to(device)).float().cpu() for i in range(0, len(images), batch)])


def check_model(name: str, args, data: dict, entry: dict, results: Results, deadline: float) -> None:
    path = args.teachers / TEACHER_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"teacher {path} not found; run benchmarks/prepare_gpu_lease.sh before the GPU run")
    model = ZOO[name]()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = fold_batchnorm(model.eval()).eval()
    entry["teacher"] = str(path)

    t0 = time.perf_counter()
    scales = kernels.calibrate_input_scales(model, [data["calib"]])
    int8 = kernels.build_int8_model(model, scales)
    entry["int8_convs"] = len(int8.qconvs)
    entry["build_s"] = round(time.perf_counter() - t0, 2)
    results.write()

    # Parity: the same Int8Model on the CPU twins and on the CUDA kernels.
    x = data["test"][: args.parity_images]
    cpu_logits = predict(int8, x, "cpu", batch=64)
    dev_logits = predict(int8.to(args.device), x, args.device)
    entry["parity"] = {
        "images": len(x),
        "max_abs_logit_diff": float((dev_logits - cpu_logits).abs().max()),
        "top1_agreement": float((dev_logits.argmax(1) == cpu_logits.argmax(1)).float().mean()),
    }
    results.write()

    # Accuracy on every test image: float on the GPU, INT8 through the kernels.
    labels = data["labels"]
    float_logits = predict(model.to(args.device), data["test"], args.device)
    int8_logits = predict(int8, data["test"], args.device)
    model.to("cpu")
    entry["accuracy"] = {
        "images": len(labels),
        "top1_float": float((float_logits.argmax(1) == labels).float().mean()),
        "top1_int8": float((int8_logits.argmax(1) == labels).float().mean()),
        "int8_vs_float_agreement": float((int8_logits.argmax(1) == float_logits.argmax(1)).float().mean()),
    }
    results.write()

    if args.device != "cuda":
        entry["latency"] = "skipped: --device cpu"
        return
    rows = entry["latency"] = []
    for batch in (1, 256):
        for backend in BACKENDS:
            if time.monotonic() > deadline:
                rows.append({"batch": batch, "backend": backend, "skipped": "time budget spent"})
                continue
            try:
                if backend == "torch-int8":
                    run = kernels.make_torch_int8_runner(int8, batch, "cuda")
                else:
                    run = make_torch_cuda_runner(model, batch, fp16="fp16" in backend, cuda_graph=backend.endswith("graph"))
                m = measure(run, budget_s=args.sample_s)
                rows.append({"batch": batch, "backend": backend, **m, "img_per_s": batch / m["median_ms"] * 1e3})
            except Exception as exc:  # one configuration failing must not lose the others
                rows.append({"batch": batch, "backend": backend, "error": f"{type(exc).__name__}: {exc}"})
            print(f"  {name} b{batch:<3d} {backend:16s} {rows[-1]}")
            results.write()
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teachers", type=Path, default=default_teachers())
    parser.add_argument("--test-data", type=Path, default=default_test_data())
    parser.add_argument("--calib-data", type=Path, default=ROOT / "demo" / "cifar10-demo.tar.gz")
    parser.add_argument("--models", nargs="+", default=list(TEACHER_FILES), choices=list(TEACHER_FILES))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--parity-images", type=int, default=256)
    parser.add_argument("--max-test-images", type=int, default=0, help="0: every test image")
    parser.add_argument("--sample-s", type=float, default=1.0, help="seconds of samples per latency figure")
    parser.add_argument("--budget-s", type=float, default=180.0, help="no new latency figure after this")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s

    results = Results(args.out, {"torch": torch.__version__, "torch_cuda": torch.version.cuda})
    try:
        prepare(args, results)
        data = load_data(args, results)
    except Exception as exc:
        results.doc["error"] = f"{type(exc).__name__}: {exc}"
        results.write()
        traceback.print_exc()
        return 1

    failed = 0
    for name in args.models:
        entry = results.model(name)
        t0 = time.perf_counter()
        try:
            check_model(name, args, data, entry, results, deadline)
            entry["status"] = "ok"
        except Exception as exc:
            failed += 1
            entry["status"] = f"failed: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        results.write()
        summary = {k: entry.get(k) for k in ("status", "parity", "accuracy")}
        print(f"{name}: {json.dumps(summary)}")
    return 1 if failed else 0


def prepare(args, results: Results) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device")
    torch.backends.cudnn.benchmark = True
    results.doc.update(
        gpu=torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        kernels_lib=str(kernels.load_ops()),
        latency_note="one synchronous inference between CUDA events, host dispatch included; median of samples",
    )
    results.write()


def load_data(args, results: Results) -> dict:
    pre = Preprocess()
    test = load_dataset(args.test_data).test
    if args.max_test_images:
        test = test.subset(np.arange(min(args.max_test_images, len(test))))
    calib_split = load_dataset(args.calib_data).train
    per_class = 256 // len(np.unique(calib_split.labels))
    calib_index = np.concatenate([np.flatnonzero(calib_split.labels == c)[:per_class] for c in np.unique(calib_split.labels)])
    data = {
        "test": pre(test.images),
        "labels": torch.from_numpy(test.labels),
        "calib": pre(calib_split.images[calib_index]),
    }
    results.doc["data"] = {
        "test": str(args.test_data),
        "test_images": len(test),
        "calibration": f"{args.calib_data} (train split, {len(calib_index)} images)",
    }
    results.write()
    print(f"test images: {len(test)} from {args.test_data}; calibration: {len(calib_index)} from {args.calib_data}")
    return data


if __name__ == "__main__":
    raise SystemExit(main())
