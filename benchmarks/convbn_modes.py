"""Train, Eval and Tune mode side by side on one fine-tuning step of the real ResNet-56 teacher (CPU).

Tune mode follows You et al., "Efficient ConvBN Blocks for Transfer Learning and Beyond" (ICLR 2024): with
frozen BatchNorm it should train like Eval mode with less memory and time. Each mode runs in a fresh
subprocess, so its peak RSS (``ru_maxrss`` minus the RSS right before the first step) is its own. The parent
never imports torch or decodes images; a separate subprocess writes the batches, so no child inherits a
high-water mark. With ``--onnx`` it also times ONNX Runtime (CPU) on the model before and after Deploy folding.

    python benchmarks/convbn_modes.py --json convbn_modes.json [--onnx]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODES = ("train", "eval", "tune")
MODE_NOTES = {"train": "BN batch stats", "eval": "BN frozen, conv→BN", "tune": "BN frozen, folded per step"}


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _load_teacher(name: str, path: str):
    import torch

    from compressor.core.zoo import ZOO

    model = ZOO[name]()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def prepare(args: argparse.Namespace, out: Path) -> None:
    """Write the step batches (real training images, seeded) to ``out`` so mode workers load only those."""
    import numpy as np

    from compressor.core.data import load_dataset

    ds = load_dataset(args.data)
    rng = np.random.default_rng(args.seed)
    n = (args.warmup + args.steps) * args.batch
    idx = rng.choice(len(ds.train), n, replace=False)
    np.savez(out, images=ds.train.images[idx], labels=ds.train.labels[idx])
    # The test images are for the ONNX timings.
    np.savez(out.with_name("test.npz"), images=ds.test.images[:64])


def worker(args: argparse.Namespace, batches: Path) -> dict:
    """One mode: ``warmup + steps`` SGD steps; median step time and peak RSS above the pre-step baseline."""
    import resource
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    from compressor.core.data import Preprocess
    from compressor.graph.fusion import enable_tune_mode

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _load_teacher(args.model, args.teacher)
    z = np.load(batches)
    xs = Preprocess()(z["images"]).split(args.batch)
    ys = torch.from_numpy(z["labels"]).split(args.batch)
    model.train()
    if args.worker != "train":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    pairs = len(enable_tune_mode(model).pairs) if args.worker == "tune" else 0
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    baseline_kib, maxrss_before_kib = _rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu_times = [], []
    for x, y in zip(xs, ys):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": args.worker,
        "tune_pairs": pairs,
        "step_s": times[args.warmup :],
        "cpu_s": cpu_times[args.warmup :],
        "peak_rss_mib": (peak_kib - baseline_kib) / 1024,
        "baseline_rss_mib": baseline_kib / 1024,
        "maxrss_before_steps_mib": maxrss_before_kib / 1024,
        "threads": torch.get_num_threads(),
        "final_loss": float(loss),
    }


def onnx_worker(args: argparse.Namespace, test_images: Path) -> dict:
    """ORT-CPU latency of the ONNX model with BatchNorm nodes and after :func:`fold_batchnorm`."""
    import time
    import warnings

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from compressor.core.data import Preprocess
    from compressor.graph.fusion import fold_batchnorm

    model = _load_teacher(args.model, args.teacher).eval()
    x64 = Preprocess()(np.load(test_images)["images"]).numpy()
    out: dict = {"runs": []}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("bn", "folded"):
            if label == "folded":
                fold_batchnorm(model)
            path = Path(tmp) / f"{label}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # PRESERVE: the exporter's eval-mode peephole would otherwise fold conv+BN itself.
                torch.onnx.export(
                    model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"], opset_version=17,
                    dynamic_axes={"input": {0: "batch"}}, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                )
            n_bn = [n.op_type for n in onnx.load(str(path)).graph.node].count("BatchNormalization")
            for level_name, level in (("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                                      ("none", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
                opts = ort.SessionOptions()
                opts.intra_op_num_threads, opts.inter_op_num_threads = args.ort_threads, 1
                opts.graph_optimization_level = level
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                outputs[(label, level_name)] = sess.run(None, {"input": x64})[0]
                for batch, reps in ((1, args.ort_reps_b1), (64, args.ort_reps_b64)):
                    feed = {"input": x64[:batch]}
                    for _ in range(3):
                        sess.run(None, feed)
                    times = []
                    for _ in range(reps):
                        start = time.perf_counter()
                        sess.run(None, feed)
                        times.append(time.perf_counter() - start)
                    out["runs"].append({"model": label, "bn_nodes": n_bn, "ort_opt": level_name, "batch": batch,
                                        "median_ms": statistics.median(times) * 1e3, "reps": reps})
    out["max_abs_logit_diff_folded_vs_bn"] = float(
        np.abs(outputs[("folded", "none")] - outputs[("bn", "none")]).max()
    )
    return out


def _run_child(args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, *extra, "--model", args.model, "--teacher", args.teacher, "--data", args.data,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--seed", str(args.seed), "--threads", str(args.threads), "--ort-threads", str(args.ort_threads),
           "--ort-reps-b1", str(args.ort_reps_b1), "--ort-reps-b64", str(args.ort_reps_b64)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"child {' '.join(extra)} failed:\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per mode over all rounds: median wall and CPU time per step, and the largest peak RSS."""
    out = {}
    for name in MODES:
        mine = [r for r in runs if r["mode"] == name]
        out[name] = {
            "step_s_median": statistics.median(t for r in mine for t in r["step_s"]),
            "cpu_s_median": statistics.median(t for r in mine for t in r["cpu_s"]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
            "tune_pairs": mine[0]["tune_pairs"],
            "threads": mine[0]["threads"],
        }
    return out


def _table(results: dict) -> str:
    modes = results["summary"]
    ev, tune = modes["eval"], modes["tune"]
    rows = [
        (
            f"ResNet-56 ({results['model']}), one SGD step (forward+backward+step), batch {results['batch']}, CPU, "
            f"{ev['threads']} torch threads; median over {results['rounds']} round(s) x {results['steps']} steps "
            f"after {results['warmup']} warm-up; each mode in a fresh process"
        ),
        "",
        "| mode | BatchNorm | wall s/step | × Eval | CPU s/step | × Eval | peak RSS over baseline (MiB) | × Eval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in MODES:
        r = modes[name]
        rows.append(
            f"| {name.capitalize()} | {MODE_NOTES[name]} | {r['step_s_median']:.3f} | "
            f"{r['step_s_median'] / ev['step_s_median']:.2f} | {r['cpu_s_median']:.3f} | "
            f"{r['cpu_s_median'] / ev['cpu_s_median']:.2f} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_mib'] / ev['peak_rss_mib']:.2f} |"
        )
    mem_ok = tune["peak_rss_mib"] <= 0.7 * ev["peak_rss_mib"]
    time_ok = tune["step_s_median"] <= 0.9 * ev["step_s_median"]
    rows += [
        "",
        (
            f"Goal Tune ≤ 0.7× Eval memory: {'met' if mem_ok else 'NOT met'}; "
            f"Tune ≤ 0.9× Eval wall time: {'met' if time_ok else 'NOT met'} (Tune folded {tune['tune_pairs']} pairs)"
        ),
    ]
    if "onnx" in results:
        o = results["onnx"]
        rows += [
            "",
            (
                f"ONNX Runtime CPU, {results['ort_threads']} threads, median latency (ms); "
                f"max |logit diff| folded vs BN graph: {o['max_abs_logit_diff_folded_vs_bn']:.2e}"
            ),
            "",
            "| graph | BatchNormalization nodes | ORT graph optimisation | batch | median (ms) |",
            "|---|---|---|---|---|",
        ]
        for r in o["runs"]:
            rows.append(f"| {r['model']} | {r['bn_nodes']} | {r['ort_opt']} | {r['batch']} | {r['median_ms']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet56")
    p.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10_resnet56.pt"))
    p.add_argument("--data", default=str(SHARED / "cifar10" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="repeat Train/Eval/Tune in turn, pooling step times")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for the steps (0: torch's default)")
    p.add_argument("--onnx", action="store_true", help="also time ONNX Runtime before/after Deploy folding")
    p.add_argument("--ort-threads", type=int, default=2)
    p.add_argument("--ort-reps-b1", type=int, default=200)
    p.add_argument("--ort-reps-b64", type=int, default=30)
    p.add_argument("--json", type=Path, help="write all measurements here")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--batches", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--onnx-worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.prepare:
        prepare(args, args.prepare)
        return
    if args.worker:
        print(json.dumps(worker(args, args.batches)))
        return
    if args.onnx_worker:
        print(json.dumps(onnx_worker(args, args.onnx_worker)))
        return

    keys = ("model", "batch", "steps", "warmup", "rounds", "seed", "ort_threads")
    results: dict = {k: getattr(args, k) for k in keys}
    with tempfile.TemporaryDirectory() as tmp:
        batches = Path(tmp) / "batches.npz"
        _run_child(args, ["--prepare", str(batches)])
        results["runs"] = [
            _run_child(args, ["--worker", m, "--batches", str(batches)]) for _ in range(args.rounds) for m in MODES
        ]
        results["summary"] = summarise(results["runs"])
        if args.onnx:
            results["onnx"] = _run_child(args, ["--onnx-worker", str(batches.with_name("test.npz"))])
    table = _table(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({**results, "table": table}, indent=2))


if __name__ == "__main__":
    main()
