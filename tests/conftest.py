"""Shared fixtures: the bundled ResNet-20 teacher and the demo CIFAR-10 subset (real images, real weights)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "demo" / "cifar10-demo.tar.gz"
DEMO_TEACHER = ROOT / "demo" / "cifar10_resnet20.pt"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    import os

    os.environ["COMPRESSOR_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_dataset():
    from compressor.core.data import load_dataset

    return load_dataset(DEMO_DATA)


@pytest.fixture(scope="session")
def demo_splits(demo_dataset):
    from compressor.core.data import make_splits

    return make_splits(demo_dataset, seed=0, validation=500, calibration=500)


@pytest.fixture()
def teacher():
    from compressor.core.zoo import ZOO

    model = ZOO["cifar_resnet20"]()
    model.load_state_dict(torch.load(DEMO_TEACHER, weights_only=True))
    return model.eval()


@pytest.fixture()
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from compressor.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        old = sys.argv
        sys.argv = ["compressor", *map(str, args)]
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = old
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


class StairTarget:
    """An analytic stand-in for a runtime's latency (no timing): a conv costs in blocks of 8 input and 8 output
    channels, as CPU kernels do, so its latency is a staircase in the channel counts; INT8 is 0.4x FP32; a whole
    model pays 0.003 ms per layer more than its layers' own timings (what the calibration's overhead must learn).
    Counts what it is asked."""

    name = "ort-cpu"
    EMPTY_MS, LAYER_EXTRA_MS = 0.02, 0.003

    def __init__(self, threads: int = 2, tag: str = "stair"):
        self.threads, self.tag = threads, tag
        self.layers_timed, self.models_timed, self.fail_after = 0, 0, None

    def fingerprint(self) -> dict[str, str]:
        return {"target": self.tag, "threads": str(self.threads)}

    @staticmethod
    def own_ms(shape, precision: str, batch: int) -> float:
        import math

        s = shape
        if s.kind == "empty":
            return 0.0
        if s.kind == "conv":
            oh, ow = s.out_hw
            units = math.ceil(s.cin / s.groups / 8) * math.ceil(s.cout / 8) * 64 * s.kernel**2 * oh * ow
        elif s.kind == "linear":
            units = s.cin * s.cout
        else:
            units = s.cin * s.h * s.w / 4
        return batch * units * 1e-7 * (0.4 if precision == "int8" else 1.0)

    def time_layer(self, shape, precision: str, batches: list[int]) -> dict[int, float]:
        if self.fail_after is not None and self.layers_timed >= self.fail_after:
            raise KeyboardInterrupt  # a profile killed part-way
        self.layers_timed += 1
        return {b: self.EMPTY_MS + self.own_ms(shape, precision, b) for b in batches}

    def time_model(self, model, input_shape, precision: str, batches: list[int]) -> dict[int, float]:
        from compressor.runtime.latency_model import describe

        shapes = [layer.shape for layer in describe(model, tuple(input_shape))]
        return {b: self.EMPTY_MS + sum(self.LAYER_EXTRA_MS + self.own_ms(s, precision, b) for s in shapes)
                for b in batches}

    def time_models(self, models, input_shape, batches: list[int], rounds: int = 1) -> list[dict[int, float]]:
        self.models_timed += len(models)
        return [self.time_model(m, input_shape, precision, batches) for m, precision in models]


@pytest.fixture()
def stair_target(monkeypatch):
    """Replace ort-cpu's latency target by :class:`StairTarget` (fresh cache file per test); returns the instance."""
    import uuid

    from compressor.runtime import latency_targets

    target = StairTarget(tag=f"stair-{uuid.uuid4().hex[:8]}")
    monkeypatch.setitem(latency_targets.TARGETS, "ort-cpu", lambda threads=2: target)
    return target
