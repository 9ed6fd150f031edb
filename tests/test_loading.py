"""Model input: zoo names, callables, state_dicts, pickles, and every bad checkpoint the README promises to catch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.core.models import load_user_model
from compressor.core.zoo import ZOO
from compressor.errors import CompressorError

from .conftest import DEMO_TEACHER


def test_zoo_names_build_and_resnet20_loads_teacher_unchanged(teacher):
    assert sum(p.numel() for p in teacher.parameters()) == 269_722
    loaded = load_user_model("cifar_resnet20", str(DEMO_TEACHER), input_shape=(3, 32, 32)).model
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), teacher(x))
    params = {n: sum(p.numel() for p in ZOO[n]().parameters()) for n in ZOO}
    assert params["cifar_resnet56"] == 853_018 and params["cifar_mobilenetv2"] == 700_778
    assert params["cifar_resnet32"] < params["cifar_resnet44"] < params["cifar_resnet56"]


def test_callable_from_module_and_from_file(tmp_path):
    assert isinstance(load_user_model("compressor.core.zoo:CifarMobileNetV2").model, nn.Module)
    f = tmp_path / "mynet.py"
    f.write_text("import torch.nn as nn\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3*32*32, 10))\n")
    loaded = load_user_model(f"{f}:build", input_shape=(3, 32, 32))
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert "compressor_user_mynet" in loaded.allowed_modules


def test_state_dict_mismatch_names_keys(tmp_path):
    sd = torch.load(DEMO_TEACHER, weights_only=True)
    sd.pop("linear.weight")
    sd["extra.weight"] = torch.zeros(1)
    p = tmp_path / "bad.pt"
    torch.save(sd, p)
    with pytest.raises(CompressorError, match=r"missing keys \['linear.weight'\].*unexpected keys \['extra.weight'\]"):
        load_user_model("cifar_resnet20", str(p))
    with pytest.raises(CompressorError, match="missing keys"):
        load_user_model("cifar_resnet56", str(DEMO_TEACHER))
    sd = torch.load(DEMO_TEACHER, weights_only=True)
    sd["linear.weight"] = torch.zeros(10, 32)
    torch.save(sd, p)
    with pytest.raises(CompressorError, match=r"shape mismatch \['linear.weight \(10, 32\) vs model \(10, 64\)'\]"):
        load_user_model("cifar_resnet20", str(p))


def test_pickle_needs_opt_in(tmp_path, teacher):
    p = tmp_path / "whole.pt"
    torch.save(teacher, p)
    with pytest.raises(CompressorError, match="--allow-pickle"):
        load_user_model(None, str(p))
    loaded = load_user_model(None, str(p), allow_pickle=True).model
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(loaded(x), teacher(x))


def test_missing_corrupt_nan_and_bad_shape(tmp_path):
    with pytest.raises(CompressorError, match="does not exist"):
        load_user_model("cifar_resnet20", str(tmp_path / "nope.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(DEMO_TEACHER.read_bytes()[:5000])
    with pytest.raises(CompressorError, match="corrupt"):
        load_user_model("cifar_resnet20", str(corrupt))
    sd = torch.load(DEMO_TEACHER, weights_only=True)
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    nan = tmp_path / "nan.pt"
    torch.save(sd, nan)
    with pytest.raises(CompressorError, match="NaN or Inf"):
        load_user_model("cifar_resnet20", str(nan))
    with pytest.raises(CompressorError, match=r"rejects input shape \(1, 32, 32\)"):
        load_user_model("cifar_resnet20", str(DEMO_TEACHER), input_shape=(1, 32, 32))
    with pytest.raises(CompressorError, match="unknown model"):
        load_user_model("resnet9000")
