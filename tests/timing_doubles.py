"""The quantize pass's timing, injected where timing is not what a test checks: every model timed in the same
five paired rounds, INT8 twice as fast as FP32 in each (or, with ``int8_faster=False``, half as fast). Also
imported by the child process of tests/test_resume.py's kill -9 test (its PYTHONPATH holds the repository)."""

from __future__ import annotations

from pathlib import Path

from compressor.runtime.latency import Latency


def quant_latency(int8_faster: bool = True):
    """A stand-in for ``measure_isolated``: ``fp32`` gets FP32's figures, every other model INT8's."""

    def measure(models, images, batch, threads, progress=False, **kw):
        fp32 = Latency(0.5, 3000.0, batch, throughput_rounds=(2900, 3000, 3100, 2950, 3050),
                       batch1_rounds=(0.48, 0.5, 0.52, 0.49, 0.51))
        int8 = (Latency(0.25, 6000.0, batch, throughput_rounds=(5900, 6000, 6100, 5950, 6050),
                        batch1_rounds=(0.24, 0.25, 0.26, 0.245, 0.255)) if int8_faster
                else Latency(1.0, 1500.0, batch, throughput_rounds=(1400, 1500, 1600, 1450, 1550),
                             batch1_rounds=(0.95, 1, 1.05, 0.975, 1.025)))
        return {k: fp32 if k == "fp32" else int8 for k in models}

    return measure


class PairedClock:
    """The pipeline's paired timing (``compressor.pipeline.runner.measure_isolated``), injected: ``deployed`` runs
    2x as fast as every other file at batch 1 and 3x at batch 64 in every round, the host slowing all in round 3;
    ``teacher_ort_fp32`` (the baseline on ORT) 1.25x slower than the others at batch 1 and throughput. Records which
    files were timed, on which runtime."""

    def __init__(self):
        self.calls = []

    def __call__(self, models, images, batch, threads, rounds=5, **kw):
        self.calls.append(({k: (Path(m.path).name, m.backend) for k, m in models.items()}, batch, rounds, len(images)))
        slow = (1, 1, 2, 1, 1)[:rounds]
        teacher = Latency(0.5, 2000.0, batch, tuple(2000 / f for f in slow), tuple(0.5 * f for f in slow))
        deployed = Latency(0.25, 6000.0, batch, tuple(6000 / f for f in slow), tuple(0.25 * f for f in slow))
        ort = Latency(0.625, 1600.0, batch, tuple(1600 / f for f in slow), tuple(0.625 * f for f in slow))
        return {k: deployed if k == "deployed" else ort if k == "teacher_ort_fp32" else teacher for k in models}
