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
