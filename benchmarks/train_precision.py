"""Seconds per knowledge-distillation step (ResNet-56 teacher forward + student forward/backward/SGD, batch 128)
in fp32 and bf16 autocast, NCHW and channels-last, and in bf16 with the teacher's logits cached, for three
students: the unpruned ResNet-56, and one pruned to 2.5× fewer MACs with inner widths rounded to 8 and unrounded.
Random inputs: speed only.

    python benchmarks/train_precision.py --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.train import _channels_last_pays, bf16_supported
from compressor.core.zoo import ZOO
from compressor.passes.base import Context
from compressor.passes.prune import Prune, PruneConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def seconds_per_step(student: torch.nn.Module, teacher: torch.nn.Module, bf16: bool, student_cl: bool,
                     teacher_cl: bool, steps: int, cached: bool = False) -> float:
    """Seconds per KD step; ``cached``: the teacher's logits are computed once and reused (N2N's
    ``student_augment: false``), so the step has no teacher forward pass."""
    s_fmt, t_fmt = (torch.channels_last if cl else torch.contiguous_format for cl in (student_cl, teacher_cl))
    student.to(memory_format=s_fmt).train()
    teacher.to(memory_format=t_fmt).eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(128, 3, 32, 32)
    xs, xt = x.contiguous(memory_format=s_fmt), x.contiguous(memory_format=t_fmt)
    y = torch.randint(0, 10, (128,))

    with torch.no_grad():
        fixed = teacher(xt) if cached else None

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if cached:
                t = fixed
            else:
                with torch.no_grad():
                    t = teacher(xt)
            s = student(xs)
        loss = F.mse_loss(s.float(), t.float()) + F.cross_entropy(s.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10_resnet56.pt"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not bf16_supported():
        raise SystemExit("this CPU has no native bfloat16 (AVX-512 BF16 or AMX); nothing to compare")
    teacher = ZOO["cifar_resnet56"]()
    teacher.load_state_dict(torch.load(args.teacher, weights_only=True))
    teacher.eval()
    splits = make_splits(load_dataset(ROOT / "demo" / "cifar10-demo.tar.gz"), seed=0, validation=100, calibration=10)
    ctx = Context(splits, teacher, Preprocess(), (3, 32, 32), Path(tempfile.mkdtemp()), seed=0, progress=False)
    students = {"unpruned": ZOO["cifar_resnet56"]()}
    for round_to in (8, 1):
        cfg = PruneConfig(criterion="l1", target_macs_reduction=2.5, scope="inner", global_ranking=False,
                          round_to=round_to)
        students[f"pruned 2.5x MACs, round_to {round_to}"] = Prune(cfg).run(teacher, ctx).model
    print(f"{torch.get_num_threads()} threads, batch 128, mean of {args.steps} steps after 2 warm-up")
    print("| student | inner widths | fp32 NCHW | fp32 channels-last | bf16 NCHW | bf16 channels-last "
          "| bf16 as distill runs it (teacher channels-last) | the same, teacher logits cached |")
    print("|---|---|---|---|---|---|---|---|")
    for name, student in students.items():
        widths = "/".join(str(student.get_submodule(f"layer{k}.1.conv1").out_channels) for k in (1, 2, 3))
        row = {(bf16, cl): seconds_per_step(student, teacher, bf16, cl, cl, args.steps)
               for bf16 in (False, True) for cl in (False, True)}
        chosen = seconds_per_step(student, teacher, True, _channels_last_pays(student), True, args.steps)
        cached = seconds_per_step(student, teacher, True, _channels_last_pays(student), True, args.steps, cached=True)
        print(f"| {name} | {widths} | " + " | ".join(f"{row[k]:.3f}" for k in sorted(row)) +
              f" | {chosen:.3f} | {cached:.3f} |", flush=True)


if __name__ == "__main__":
    main()
