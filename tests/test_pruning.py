"""Pruning by Explaining: LRP conservation, channel coupling, physical removal, export, and the prune pass."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.metrics import count_macs, count_params, predict
from compressor.core.zoo import ZOO
from compressor.graph.dependency import DependencyGraph
from compressor.graph.modules import Add, ChannelPadShortcut
from compressor.passes.base import Context
from compressor.passes.prune import Prune, PruneConfig
from compressor.pruning import lrp
from compressor.pruning.criteria import CRITERIA, LRPCriterion, group_scores
from compressor.pruning.prune import conv_widths, select
from compressor.runtime.export import check_parity, export_onnx

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def splits():
    return make_splits(load_dataset(ROOT / "demo" / "cifar10-demo.tar.gz"), seed=0, validation=500, calibration=500)


@pytest.fixture(scope="module")
def resnet20():
    model = ZOO["cifar_resnet20"]()
    model.load_state_dict(torch.load(ROOT / "demo" / "cifar10_resnet20.pt", weights_only=True))
    return model.eval()


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.2)
    return model.eval()


class _Chain(nn.Module):
    """Bias-free conv net with BN (folded by the canonizer) and a residual add; Linear without bias."""

    def __init__(self, residual: bool):
        super().__init__()
        self.residual = residual
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.add = Add()
        self.pool, self.flatten, self.linear = nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(self.conv1(x)))
        b = self.relu2(self.bn2(self.conv2(a)))
        c = self.bn3(self.conv3(b))
        c = self.relu3(self.add(c, a) if self.residual else c)
        return self.linear(self.flatten(self.pool(c)))


@pytest.mark.parametrize("residual", [False, True])
def test_lrp_conserves_relevance(residual):
    torch.manual_seed(0)
    model = _random_bn(_Chain(residual))
    pre = Preprocess()
    x = pre((np.random.default_rng(0).random((6, 8, 8, 3)) * 255).astype(np.uint8))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    before = model(x)
    captured, r_in = lrp.relevance_at_convs(model, x, labels, *pre.bounds(), return_input=True)
    assert torch.allclose(r_in.sum(dim=(1, 2, 3)), torch.ones(6), atol=1e-4)
    totals = {name: torch.cat(rel.signed).sum(1) for name, rel in captured.items()}
    # Every cut through the network carries the whole output relevance. With the residual add, the branch
    # (conv2 → conv3) carries its proportional share, conserved layer by layer, and conv1's output gets both
    # paths back.
    assert torch.allclose(totals["conv1"], torch.ones(6), atol=1e-4)
    assert torch.allclose(totals["conv2"], totals["conv3"], atol=1e-4)
    if not residual:
        assert torch.allclose(totals["conv3"], torch.ones(6), atol=1e-4)
    assert torch.equal(model(x), before)  # canonizer undone, hooks removed, original untouched
    assert not model.bn1.eps == 0


class _PlainJoins(_Chain):
    """_Chain as users write it: the residual is a plain ``c + a`` (or ``torch.add``, ``+=``), or the two
    branches are concatenated (``torch.cat``) into a wider conv, with functional ReLUs."""

    def __init__(self, join: str):
        super().__init__(residual=True)
        self.join = join
        if join == "cat":
            self.conv4 = nn.Conv2d(16, 8, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.conv2(a)))
        c = self.bn3(self.conv3(b))
        if self.join == "plus":
            c = c + a
        elif self.join == "torch.add":
            c = torch.add(a, c)
        elif self.join == "iadd":
            c += a
        else:
            c = self.conv4(F.relu(torch.cat([c, a], 1)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(F.relu(c), 1), 1))


@pytest.mark.parametrize("join", ["plus", "torch.add", "iadd", "cat"])
def test_lrp_canonizer_conserves_relevance_at_plain_joins(join, monkeypatch):
    torch.manual_seed(0)
    model = _random_bn(_PlainJoins(join))
    pre = Preprocess()
    x = pre((np.random.default_rng(0).random((6, 8, 8, 3)) * 255).astype(np.uint8))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every join and call is known: no warning
        captured, r_in = lrp.relevance_at_convs(model, x, labels, *pre.bounds(), return_input=True)
    assert torch.allclose(r_in.sum(dim=(1, 2, 3)), torch.ones(6), atol=1e-4)
    if join != "cat":  # the same relevance, layer by layer, as the zoo-style model with an Add module
        reference = _Chain(residual=True)
        reference.load_state_dict(model.state_dict())
        expected, r_ref = lrp.relevance_at_convs(reference.eval(), x, labels, *pre.bounds(), return_input=True)
        assert torch.allclose(r_in, r_ref, atol=1e-6)
        assert all(torch.allclose(captured[k].score("none"), expected[k].score("none"), atol=1e-6) for k in expected)
    # Without the canonizer the gradient hands the whole relevance to both summands.
    monkeypatch.setattr(lrp, "canonize_joins", lambda model, shape: model)
    _, r_plain = lrp.relevance_at_convs(model, x, labels, *pre.bounds(), return_input=True)
    if join != "cat":
        assert (r_plain.sum(dim=(1, 2, 3)) - 1).abs().min() > 0.1


def test_lrp_warns_about_functional_calls_without_a_rule():
    class Scaled(_Chain):
        def forward(self, x):
            a = self.relu1(self.bn1(self.conv1(x)))
            return self.linear(self.flatten(self.pool(torch.exp(a) * 0.5)))

    pre = Preprocess()
    x = pre((np.random.default_rng(0).random((2, 8, 8, 3)) * 255).astype(np.uint8))
    with pytest.warns(UserWarning, match=r"no rule for functional call\(s\) exp \(exp\), mul \(mul\)"):
        lrp.relevance_at_convs(Scaled(False).eval(), x, torch.tensor([0, 1]), *pre.bounds())


def test_planted_zero_filter_is_least_relevant(resnet20, splits):
    model = copy.deepcopy(resnet20)
    graph = DependencyGraph(model, SHAPE)
    planted = next(g for g in graph.groups() if g.sources == (("layer2.1.conv1", 5),))
    graph.mask([planted])
    groups = graph.groups()
    reference = splits.reference.subset(np.arange(0, len(splits.reference), 2))
    scores = group_scores(groups, LRPCriterion()(model, reference, Preprocess()))
    assert scores[planted.index] == 0.0 and scores.min() == 0.0
    widths = conv_widths(model)
    first = select(groups, scores, 1, widths, dict.fromkeys(widths, 1))
    assert first == [planted] or scores[first[0].index] == 0.0


def test_resnet20_groups_follow_residual_chains_through_the_pad(resnet20):
    groups = DependencyGraph(resnet20, SHAPE).groups()
    assert len(groups) == 400 and sum(g.size for g in groups) == 688
    inner = [g for g in groups if not g.residual]
    assert len(inner) == 336 and all(g.size == 1 and len(g.batchnorms) == 1 for g in inner)
    chains = [g for g in groups if g.size == 10]
    assert len(chains) == 16
    for c, g in enumerate(chains):
        assert ("conv1", c) in g.sources and ("layer1.2.conv2", c) in g.sources
        assert ("layer2.0.conv2", c + 8) in g.sources and ("layer3.2.conv2", c + 24) in g.sources
        assert ("linear", c + 24) in g.consumers and ("layer2.0.conv1", c) in g.consumers and not g.pads
    padded = [g for g in groups if g.pads]
    assert len(padded) == 16 + 32
    assert {len(g.sources) for g in padded} == {6, 3}


def test_mask_equals_removal_and_costs_fall(resnet20, splits):
    pre, images = Preprocess(), splits.test.subset(np.arange(200))
    graph = DependencyGraph(resnet20, SHAPE)
    groups = graph.groups()
    rng = np.random.default_rng(0)
    chosen = [g for g in groups if rng.random() < 0.3]
    assert any(g.pads for g in chosen) and any(g.size == 10 for g in chosen)
    masked, pruned = copy.deepcopy(resnet20), copy.deepcopy(resnet20)
    DependencyGraph(masked, SHAPE).mask(chosen)  # groups name modules and channels, so they apply to a copy
    graph.prune(chosen, pruned)
    diff = np.abs(predict(masked, images, pre) - predict(pruned, images, pre)).max()
    assert diff < 1e-5
    assert pruned.layer2[0].shortcut.left + pruned.layer2[0].shortcut.right + pruned.layer1[2].conv2.out_channels \
        == pruned.layer2[0].conv2.out_channels
    assert count_params(pruned) < count_params(resnet20) and count_macs(pruned, SHAPE) < count_macs(resnet20, SHAPE)

    # One inner channel: its filter, its BN pair and one input slice of the next 3x3 conv.
    one = copy.deepcopy(resnet20)
    inner = next(g for g in groups if g.sources == (("layer1.0.conv1", 0),))
    graph.prune([inner], one)
    assert count_params(resnet20) - count_params(one) == 16 * 9 + 2 + 16 * 9
    assert count_macs(resnet20, SHAPE) - count_macs(one, SHAPE) == (16 * 9 + 16 * 9) * 32 * 32
    assert isinstance(one.layer2[0].shortcut, ChannelPadShortcut)


def test_pruned_models_export_with_parity(resnet20, splits, tmp_path):
    pre, images = Preprocess(), splits.test.subset(np.arange(100))
    torch.manual_seed(0)
    mobilenet = _random_bn(ZOO["cifar_mobilenetv2"]())
    for name, model in (("resnet20", copy.deepcopy(resnet20)), ("mobilenetv2", mobilenet)):
        graph = DependencyGraph(model, SHAPE)
        groups = graph.groups()
        scores = group_scores(groups, CRITERIA["random"](0)(model))
        widths = conv_widths(model)
        chosen = select(groups, scores, sum(g.size for g in groups) // 3, widths, dict.fromkeys(widths, 1))
        if name == "mobilenetv2":
            assert any(g.depthwise for g in chosen) and any(g.residual for g in chosen)
            relevance = LRPCriterion()(model, images.subset(np.arange(4)), pre)
            assert set(relevance) == {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
            assert all(torch.isfinite(r).all() for r in relevance.values())
        graph.prune(chosen)
        path = export_onnx(model, tmp_path / f"{name}.onnx", SHAPE)
        parity = check_parity(path, model, images, pre, atol=1e-4)
        assert parity.top1_agreement == 100.0


def _small_context(splits, teacher, tmp_path) -> Context:
    """The demo splits with 100 validation and 50 reference images, to keep each step cheap."""
    small = dataclasses.replace(splits, validation=splits.validation.subset(np.arange(100)),
                                reference=splits.reference.subset(np.arange(0, len(splits.reference), 2)))
    return Context(small, teacher, Preprocess(), SHAPE, tmp_path, progress=False)


def test_prune_pass_iterative_end_to_end(resnet20, splits, tmp_path):
    ctx = _small_context(splits, resnet20, tmp_path)
    config = PruneConfig(criterion="lrp", target_ratio=0.1, schedule="iterative", step=0.05, finetune_steps=1,
                         final_finetune_steps=1, batch_size=16)
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    result = Prune(config).run(resnet20, ctx)
    steps = result.metrics["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2, 3] and steps[-1]["finetuned"]
    assert steps[0]["rate"] == 0.0 and steps[2]["rate"] == pytest.approx(0.1, abs=0.02)
    assert steps[0]["macs"] > steps[1]["macs"] > steps[2]["macs"] and steps[0]["params"] > steps[2]["params"]
    after = resnet20.state_dict()  # the input model is left alone, weights and BN statistics included
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    export_onnx(result.model, tmp_path / "pruned.onnx", SHAPE)


def test_prune_pass_meets_a_mac_target(resnet20, splits, tmp_path):
    ctx = _small_context(splits, resnet20, tmp_path)
    config = PruneConfig(criterion="l1", target_macs_reduction=1.5, scope="inner", global_ranking=False,
                         min_channels=0.25, compensate=True)
    result = Prune(config).run(resnet20, ctx)
    assert 1.5 <= result.metrics["macs_reduction"] < 1.6
    widths = result.metrics["widths"]
    assert widths["layer1.0.conv1"] >= 4 and widths["layer3.2.conv1"] >= 16 and widths["conv1"] == 16
    assert result.model.layer1[0].conv2.bias is not None  # mean replacement folded into the consumer's bias
    export_onnx(result.model, tmp_path / "pruned.onnx", SHAPE)


class _Functional(nn.Module):
    """cat on dim 1, functional ReLU, pooling and view instead of modules; ``shift`` adds a scalar (unknown op)."""

    def __init__(self, shift: bool):
        super().__init__()
        self.shift = shift
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 4, 3), nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
        y = torch.nn.functional.adaptive_avg_pool2d(y + 1 if self.shift else y, 1)
        return self.fc(y.view(y.size(0), -1))


def test_functional_ops_couple_or_block_channels():
    torch.manual_seed(0)
    model = _Functional(shift=False).eval()
    graph = DependencyGraph(model, (3, 8, 8))
    groups = graph.groups()
    assert len(groups) == 12 and groups[8].sources == (("b", 0),) and groups[8].consumers == (("fc", 8),)
    x = torch.randn(4, 3, 8, 8)
    masked, pruned = copy.deepcopy(model), copy.deepcopy(model)
    DependencyGraph(masked, (3, 8, 8)).mask(groups[::3])
    graph.prune(groups[::3], pruned)
    assert pruned.fc.in_features == 8 and torch.allclose(masked(x), pruned(x), atol=1e-6)
    assert DependencyGraph(_Functional(shift=True), (3, 8, 8)).groups() == []  # x + 1 maps 0 to 1: not prunable


def test_round_to_keeps_touched_widths_multiples_of_it(resnet20, splits, tmp_path):
    ctx = _small_context(splits, resnet20, tmp_path)
    config = PruneConfig(criterion="l1", target_ratio=0.4, scope="inner", global_ranking=False, round_to=8)
    result = Prune(config).run(resnet20, ctx)
    widths, original = result.metrics["widths"], conv_widths(resnet20)
    touched = {n: w for n, w in widths.items() if w != original[n]}
    assert touched and all(w % 8 == 0 for w in touched.values()), touched


def test_iterative_schedule_meets_a_mac_target(resnet20, splits, tmp_path):
    ctx = _small_context(splits, resnet20, tmp_path)
    config = PruneConfig(criterion="l1", target_macs_reduction=1.3, schedule="iterative", step=0.1, scope="inner")
    result = Prune(config).run(resnet20, ctx)
    reduction = count_macs(resnet20, SHAPE) / count_macs(result.model, SHAPE)
    assert reduction >= 1.3 and result.metrics["macs_reduction"] == pytest.approx(reduction)
    assert len([s for s in result.metrics["steps"] if s["step"] > 0]) >= 2  # it took more than one step
