"""Recipe validation errors name the key path; the safe serializer round-trips restructured models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.core.serialize import load_model, save_model
from compressor.core.zoo import ZOO
from compressor.errors import CompressorError
from compressor.pipeline.recipe import EXPORTS, parse_recipe, read_recipe_file, to_dict


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse(path):
    from compressor.runtime.latency_targets import TARGETS

    if "openvino-cpu" in path.read_text() and "openvino-cpu" not in TARGETS:
        with pytest.raises(CompressorError, match=r"target is 'openvino-cpu'"):  # written ahead of the runtime
            parse_recipe(read_recipe_file(path))
        return
    recipe = parse_recipe(read_recipe_file(path))
    assert recipe.model.name in ZOO and recipe.seed == 0


def test_recipe_errors_name_key_path():
    with pytest.raises(CompressorError, match=r"unknown key 'data.valdation'"):
        parse_recipe({"data": {"valdation": 3}})
    with pytest.raises(CompressorError, match=r"bench.duration must be float, got str"):
        parse_recipe({"bench": {"duration": "long"}})
    with pytest.raises(CompressorError, match=r"unknown pass 'shrinkify'"):
        parse_recipe({"passes": [{"shrinkify": {}}]})
    with pytest.raises(CompressorError, match=r"unknown key 'passes\[0\].fold_bn.bogus'"):
        parse_recipe({"passes": [{"fold_bn": {"bogus": 1}}]})
    with pytest.raises(CompressorError, match=r"export\[0\]"):
        parse_recipe({"export": ["pdf"]})
    with pytest.raises(CompressorError, match=r"seed must be int, got bool"):
        parse_recipe({"seed": True})
    # Values a pass rejects fail at parse time, before any work starts.
    with pytest.raises(CompressorError, match=r"passes\[0\].prune.criterion is 'magic'; choose lrp \| l1 \| taylor \| random"):
        parse_recipe({"passes": [{"prune": {"criterion": "magic"}}]})
    with pytest.raises(CompressorError, match=r"passes\[0\].prune.bn is 'eval'; choose frozen \| train"):
        parse_recipe({"passes": [{"prune": {"bn": "eval"}}]})
    with pytest.raises(CompressorError, match=r"passes\[0\].quantize.target is 'gpu'; choose ort-cpu \| openvino-cpu \| tensorrt"):
        parse_recipe({"passes": [{"quantize": {"target": "gpu"}}]})
    with pytest.raises(CompressorError, match=r"targets\[1\] is 'tvm'; choose ort-cpu \| openvino-cpu"):
        parse_recipe({"targets": ["ort-cpu", "tvm"]})
    with pytest.raises(CompressorError, match=r"targets must name each runtime once"):
        parse_recipe({"targets": ["openvino-cpu", "openvino-cpu"]})
    with pytest.raises(CompressorError, match=r"openvino.precision is 'fp16'; choose f32 \| bf16 \| default"):
        parse_recipe({"openvino": {"precision": "fp16"}})
    # Options that would be silently ignored by the chosen prune target are refused.
    with pytest.raises(CompressorError, match=r"round_to and global_ranking do not apply with target_speedup"):
        parse_recipe({"passes": [{"prune": {"target_speedup": 2.0, "round_to": 8}}]})
    with pytest.raises(CompressorError, match=r"round_to and global_ranking do not apply with target_speedup"):
        parse_recipe({"passes": [{"prune": {"target_speedup": 2.0, "global_ranking": False}}]})
    with pytest.raises(CompressorError, match=r"width_step applies only with target_speedup; remove it or use round_to"):
        parse_recipe({"passes": [{"prune": {"target_ratio": 0.3, "width_step": 4}}]})


@pytest.mark.parametrize(("recipe", "message"), [
    ({"data": {"validation": -5}}, r"data.validation is -5; it must be ≥ 1"),
    ({"bench": {"duration": -1}}, r"bench.duration is -1.0; it must be > 0"),
    ({"bench": {"warmup": -5}}, r"bench.warmup is -5.0; it must be ≥ 0"),
    ({"bench": {"batches": [0]}}, r"bench.batches\[0\] is 0; it must be ≥ 1"),
    ({"seed": -1}, r"seed is -1; it must be ≥ 0"),
    ({"passes": [{"prune": {"finetune_steps": -3}}]}, r"prune.finetune_steps is -3; it must be ≥ 0"),
    ({"passes": [{"prune": {"batch_size": 0}}]}, r"prune.batch_size is 0; it must be ≥ 1"),
    ({"passes": [{"prune": {"target_ratio": 1.0}}]}, r"prune.target_ratio is 1.0; it must be > 0, < 1"),
    ({"passes": [{"prune": {"target_macs_reduction": 0.5}}]}, r"target_macs_reduction is 0.5; it must be > 1"),
    ({"passes": [{"quantize": {"max_evals": 0}}]}, r"quantize.max_evals is 0; it must be ≥ 1"),
    ({"passes": [{"quantize": {"baselines": ["annealing"]}}]}, r"baselines\[0\] is 'annealing'; choose xgboost"),
    ({"passes": [{"n2n": {"rollouts": 0}}]}, r"n2n.rollouts is 0; it must be ≥ 1"),
    ({"budget": {"max_accuracy_drop": float("nan")}}, r"max_accuracy_drop must be a finite number"),
    ({"model": {"std": [0.2, 0.2, 0]}}, r"model.std\[2\] is 0.0; it must be > 0"),
])
def test_numbers_out_of_range_fail_with_the_key_path(recipe, message):
    with pytest.raises(CompressorError, match=message):
        parse_recipe(recipe)


def test_a_network_changing_pass_after_quantize_is_refused():
    with pytest.raises(CompressorError, match=r"passes\[1\] prune changes the network after quantize"):
        parse_recipe({"passes": ["quantize", "prune"], "export": ["onnx", "onnx_int8"]})
    with pytest.raises(CompressorError, match=r"passes\[2\] fold_bn changes the network after quantize"):
        parse_recipe({"passes": ["fold_bn", "quantize", "fold_bn"]})
    assert [p.name for p in parse_recipe({"passes": ["prune", "fold_bn", "quantize"]}).passes] == \
        ["prune", "fold_bn", "quantize"]


def test_recipe_defaults_and_round_trip():
    r = parse_recipe({"model": {"name": "cifar_resnet20"}, "passes": ["fold_bn"], "bench": {"duration": 2}})
    assert r.bench.duration == 2.0 and isinstance(r.bench.duration, float)
    assert r.targets == ["ort-cpu"] and r.openvino.precision == "f32" and "openvino" in EXPORTS
    d = to_dict(r)
    assert d["passes"][0] == {"fold_bn": {}} or "fold_bn" in d["passes"][0]
    assert parse_recipe(d) == r


def test_serializer_round_trip_of_restructured_model(tmp_path):
    m = ZOO["cifar_resnet20"]().eval()
    blk = m.layer2[0]
    blk.conv1, blk.bn1 = nn.Conv2d(16, 7, 3, 2, 1, bias=False), nn.BatchNorm2d(7)
    blk.conv2 = nn.Conv2d(7, 32, 3, 1, 1, bias=False)
    m.layer1[2] = nn.Identity()
    m.eval()
    save_model(m, tmp_path / "m.pt", {"k": 1})
    m2, meta = load_model(tmp_path / "m.pt")
    x = torch.randn(3, 3, 32, 32)
    assert meta == {"k": 1}
    assert torch.equal(m(x), m2(x))
    assert isinstance(m2.layer1[2], nn.Identity) and m2.layer2[0].conv1.out_channels == 7


def test_serializer_refuses_classes_outside_allow_list(tmp_path):
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    save_model(Mine(), tmp_path / "m.pt")
    with pytest.raises(CompressorError, match="outside the allowed modules"):
        load_model(tmp_path / "m.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CompressorError, match="missing or corrupt"):
        load_model(tmp_path / "junk.pt")
