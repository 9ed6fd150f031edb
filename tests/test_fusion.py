"""Deploy folding and Tune mode (You et al., ICLR 2024) on the real ResNet-20 teacher and small edge-case models."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.core.data import Preprocess, load_dataset
from compressor.core.serialize import load_model, save_model
from compressor.core.train import bf16_supported
from compressor.core.zoo import ZOO
from compressor.errors import CompressorError
from compressor.graph.fusion import TuneConvBN, fold_batchnorm, plan_folding, tune_mode
from compressor.passes.base import PASSES

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "demo" / "cifar10_resnet20.pt"
DEMO_DATA = ROOT / "demo" / "cifar10-demo.tar.gz"


@pytest.fixture(autouse=True)
def _float32():
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset(DEMO_DATA)
    return Preprocess()(ds.test.images[:64]), torch.from_numpy(ds.test.labels[:64])


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    model = ZOO["cifar_resnet20"]()
    model.load_state_dict(torch.load(TEACHER, weights_only=True))
    return model.eval()


def _freeze_bn(model: nn.Module) -> nn.Module:
    """The project's fine-tuning setting: model in train mode, every BatchNorm frozen in eval mode."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _loss_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tune: bool):
    model.zero_grad(set_to_none=True)
    with tune_mode(model, enabled=tune):
        out = model(x)
        F.cross_entropy(out, y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _structure(model: nn.Module) -> tuple[list, list, list]:
    return (
        [(n, type(m), id(m)) for n, m in model.named_modules()],
        [(n, id(p)) for n, p in model.named_parameters()],
        list(model.state_dict()),
    )


def _onnx_ops(model: nn.Module) -> list[str]:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # PRESERVE: the TorchScript exporter's eval-mode peephole would fuse conv+BN on its own, hiding whether
        # our fold did it.
        torch.onnx.export(
            model, (torch.zeros(1, 3, 32, 32),), buf, opset_version=17, dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    return [n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node]


# --- real ResNet-20 on real CIFAR images ------------------------------------------------------------------


def test_fold_resnet20_matches_eval_float64(teacher, batch):
    x = batch[0][:16]
    reference = copy.deepcopy(teacher).double()
    with torch.no_grad():
        expected = reference(x.double())
        folded = fold_batchnorm(reference)
        assert folded is reference
        got = folded(x.double())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert (got - expected).abs().max().item() < 1e-5


def test_fold_resnet20_float32_error_no_worse_than_eval(teacher, batch):
    """In float32 both models carry rounding of ~1e-5 on logits of magnitude ~25 (measured against float64):
    the folded model must agree with the eval model within 5e-5 and be no further from float64 than 2x eval."""
    x, _ = batch
    with torch.no_grad():
        exact = copy.deepcopy(teacher).double()(x.double())  # float64 on CPU is slow: 64 images only
        eval32 = teacher(x)
        fold32 = fold_batchnorm(copy.deepcopy(teacher))(x)
    assert (fold32 - eval32).abs().max().item() < 5e-5
    eval_err = (eval32.double() - exact).abs().max().item()
    assert (fold32.double() - exact).abs().max().item() <= 2 * eval_err + 1e-6
    assert (fold32.argmax(1) == eval32.argmax(1)).all()


def test_fold_removes_batchnorm_from_onnx(teacher):
    assert "BatchNormalization" in _onnx_ops(teacher)
    folded_ops = _onnx_ops(fold_batchnorm(copy.deepcopy(teacher)))
    assert "BatchNormalization" not in folded_ops
    assert folded_ops.count("Conv") == 19


def test_tune_matches_eval_outputs_and_gradients_float64(teacher, batch):
    x, y = batch[0][:16], batch[1][:16]
    model = _freeze_bn(copy.deepcopy(teacher).double())
    out_eval, grads_eval = _loss_and_grads(model, x.double(), y, tune=False)
    out_tune, grads_tune = _loss_and_grads(model, x.double(), y, tune=True)
    assert (out_tune - out_eval).abs().max().item() < 1e-5
    # Every conv weight, BN γ and β, and the linear layer must receive its gradient through Tune mode.
    assert set(grads_tune) == set(grads_eval) == {n for n, _ in model.named_parameters()}
    for name, g in grads_eval.items():
        assert (grads_tune[name] - g).abs().max().item() < 1e-5, name


def test_tune_matches_eval_float32(teacher, batch):
    """float32: outputs within 1e-4 (logits ~25) and each gradient within 1e-3 relative L2 of Eval's.

    Exact agreement is tested in float64 above. In float32 the two orders of rounding leave ~1e-6 differences in
    pre-activations, and one ReLU whose input lies within 1e-6 of zero (measured: 1 of 262,144 in the last
    block) flips its mask, moving whole-layer gradients by ~3e-4 relative in either mode.
    """
    x, y = batch
    model = _freeze_bn(copy.deepcopy(teacher))
    out_eval, grads_eval = _loss_and_grads(model, x, y, tune=False)
    out_tune, grads_tune = _loss_and_grads(model, x, y, tune=True)
    assert (out_tune - out_eval).abs().max().item() < 1e-4
    for name, g in grads_eval.items():
        assert ((grads_tune[name] - g).norm() / g.norm()).item() < 1e-3, name


def test_tune_mode_restores_structure_and_keeps_parameters(teacher):
    model = _freeze_bn(copy.deepcopy(teacher))
    before = _structure(model)
    params_before = {id(p) for p in model.parameters()}
    with tune_mode(model) as state:
        assert len(state.pairs) == 19
        assert sum(isinstance(m, TuneConvBN) for m in model.modules()) == 19
        assert isinstance(model.bn1, nn.Identity) and isinstance(model.conv1, TuneConvBN)
        # The optimizer sees the same Parameter objects inside and outside Tune mode.
        assert {id(p) for p in model.parameters()} == params_before
    assert _structure(model) == before


def test_tune_mode_restores_structure_after_error(teacher):
    model = _freeze_bn(copy.deepcopy(teacher))
    before = _structure(model)
    with pytest.raises(RuntimeError), tune_mode(model):
        model(torch.zeros(1, 5, 32, 32))
    assert _structure(model) == before


def test_tune_mode_training_step_equals_eval_step(teacher, batch):
    """One SGD step with momentum from the same start: Tune and Eval reach the same weights (float64)."""
    x, y = batch
    results = []
    for tune in (False, True):
        model = _freeze_bn(copy.deepcopy(teacher).double())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        with tune_mode(model, enabled=tune):
            for _ in range(2):
                opt.zero_grad()
                F.cross_entropy(model(x[:4].double()), y[:4]).backward()
                opt.step()
        results.append(model.state_dict())
    for key, value in results[0].items():
        assert (results[1][key].double() - value.double()).abs().max().item() < 1e-5, key


def test_folded_model_survives_safe_serializer(teacher, batch, tmp_path):
    x, _ = batch
    folded = fold_batchnorm(copy.deepcopy(teacher))
    loaded, _ = load_model(save_model(folded, tmp_path / "folded.pt"))
    with torch.no_grad():
        assert torch.equal(loaded(x), folded(x))


# --- edge cases on small handmade models ------------------------------------------------------------------


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong fold cannot pass by accident."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is not None:
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.3, 3)
            if m.affine:
                with torch.no_grad():
                    m.weight.uniform_(0.5, 2)
                    m.bias.uniform_(-1, 1)
    return model


class Chain(nn.Module):
    def __init__(self, producer: nn.Module, bn: nn.Module):
        super().__init__()
        self.producer, self.bn, self.act = producer, bn, nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.producer(x)))


EDGE_CASES = {
    "conv_with_bias": (lambda: Chain(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8)), (2, 3, 9, 9)),
    "conv_without_bias": (lambda: Chain(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)), (2, 3, 9, 9)),
    "bn_affine_false": (lambda: Chain(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False)), (2, 3, 9, 9)),
    "conv_transpose_groups": (
        lambda: Chain(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, output_padding=1), nn.BatchNorm2d(6)),
        (2, 4, 5, 5),
    ),
    "conv_transpose_groups_no_bias": (
        lambda: Chain(nn.ConvTranspose2d(6, 9, 2, groups=3, bias=False), nn.BatchNorm2d(9)), (2, 6, 5, 5)
    ),
    "conv_transpose1d": (lambda: Chain(nn.ConvTranspose1d(3, 5, 3), nn.BatchNorm1d(5)), (2, 3, 7)),
    "depthwise": (lambda: Chain(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)), (2, 8, 6, 6)),
    "grouped": (lambda: Chain(nn.Conv2d(6, 9, 3, groups=3), nn.BatchNorm2d(9)), (2, 6, 6, 6)),
    "conv1d": (lambda: Chain(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5)), (2, 3, 10)),
    "conv3d": (lambda: Chain(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)), (2, 2, 5, 5, 5)),
    "linear_bn1d": (lambda: Chain(nn.Linear(7, 5), nn.BatchNorm1d(5)), (4, 7)),
    "linear_no_bias_bn1d": (lambda: Chain(nn.Linear(7, 5, bias=False), nn.BatchNorm1d(5)), (4, 7)),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_case_fold(case):
    build, shape = EDGE_CASES[case]
    model = _randomise_bn(build()).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(copy.deepcopy(model))
        got = folded(x)
    assert isinstance(folded.bn, nn.Identity)
    assert folded.producer.bias is not None
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_case_tune_matches_eval(case):
    build, shape = EDGE_CASES[case]
    model = _freeze_bn(_randomise_bn(build()))
    x = torch.randn(*shape)
    target = torch.randn_like(model(x))
    results = []
    for tune in (False, True):
        model.zero_grad(set_to_none=True)
        with tune_mode(model, enabled=tune) as state:
            assert len(state.pairs) == int(tune)
            out = model(x)
            F.mse_loss(out, target).backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_eval, grads_eval), (out_tune, grads_tune) = results
    assert (out_tune - out_eval).abs().max().item() < 1e-5
    expected = {"producer.weight"} | ({"producer.bias"} if model.producer.bias is not None else set())
    expected |= {"bn.weight", "bn.bias"} if model.bn.affine else set()
    assert set(grads_eval) == set(grads_tune) == expected
    for name, g in grads_eval.items():
        assert (grads_tune[name] - g).abs().max().item() < 1e-5, name


class TwoConsumers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        z = self.conv(x)
        return self.bn(z) + z


class SharedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.bn = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv1(x)) + self.bn(self.conv2(x))


class AliasedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.same_bn = self.bn

    def forward(self, x):
        return self.same_bn(self.conv(x))


class NoStatsBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        return self.bn(self.conv(x))


class BNAfterReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.bn = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.relu(self.conv(x)))


@pytest.mark.parametrize(
    "model_cls, reason",
    [
        (TwoConsumers, "2 consumers"),
        (SharedBN, "called 2 times"),
        (AliasedBN, "several paths"),
        (NoStatsBN, "no running statistics"),
        (BNAfterReLU, "not the output of a Conv"),
    ],
)
def test_unfoldable_bn_is_left_alone(model_cls, reason):
    model = _randomise_bn(model_cls()).eval()
    x = torch.randn(2, 3, 8, 8)
    plan = plan_folding(model)
    assert plan.pairs == []
    assert len(plan.left_unfolded) == 1 and reason in next(iter(plan.left_unfolded.values()))
    before = _structure(model)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(fold_batchnorm(model)(x), expected)
    assert _structure(model) == before
    with tune_mode(model) as state:
        assert state.pairs == []
        assert _structure(model) == before


def test_tune_mode_falls_back_when_bn_trains():
    torch.manual_seed(1)
    reference = _randomise_bn(Chain(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))).train()
    model = copy.deepcopy(reference)
    x = torch.randn(4, 3, 9, 9)
    # BN in training mode on entry: the pair is not rewritten at all.
    with tune_mode(model) as state:
        assert state.pairs == [] and isinstance(model.bn, nn.BatchNorm2d)
    # BN switched to training inside the body: TuneConvBN runs conv → BN with batch statistics.
    model.eval()
    with tune_mode(model) as state:
        assert len(state.pairs) == 1
        model.train()
        assert isinstance(model.producer, TuneConvBN) and model.producer.bn.training
        got = model(x)
    expected = reference(x)
    assert (got - expected).abs().max().item() < 1e-5
    assert torch.allclose(model.bn.running_mean, reference.bn.running_mean)
    assert model.bn.num_batches_tracked.item() == 1


def test_untraceable_model_raises_clear_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            z = self.conv(x)
            return self.bn(z) if z.sum() > 0 else z

    model = DataDependent().eval()
    with pytest.raises(CompressorError, match="torch.fx could not trace"):
        fold_batchnorm(model)
    with pytest.raises(CompressorError, match=r"even on a real input of shape \(3, 8, 8\).*tensor values"):
        fold_batchnorm(model, (3, 8, 8))  # a real input does not help control flow on values
    before = _structure(model)
    with pytest.warns(UserWarning, match="Tune mode disabled"), tune_mode(model) as state:
        assert state.pairs == []
    assert _structure(model) == before


class ShapeDependent(nn.Module):
    """Public model code: the stem depends on the input size, the head reads the batch size from the tensor."""

    def __init__(self):
        super().__init__()
        self.small, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.large = nn.Conv2d(3, 4, 7, stride=2, padding=3)
        self.bn1d = nn.BatchNorm1d(4)
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        h = x.shape[2]
        out = F.relu(self.bn(self.small(x) if h <= 64 else self.large(x)))
        n, c = out.shape[:2]
        out = F.batch_norm(out.mean((2, 3)), self.bn1d.running_mean, self.bn1d.running_var, training=self.training)
        return self.linear(out.reshape(n, c) if x.dim() == 4 else out)


def test_shape_dependent_forward_is_traced_on_the_input_shape(batch):
    from compressor.graph.trace import trace

    model = _randomise_bn(ShapeDependent()).train()
    with pytest.raises(CompressorError, match="torch.fx could not trace"):
        trace(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = trace(model, "analyse", (3, 32, 32))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # tracing ran but changed nothing
    assert {n.target for n in gm.graph.nodes if n.op == "call_module"} == {"small", "bn", "linear"}
    model.eval()
    x = batch[0][:5]
    assert torch.equal(trace(model, "analyse", (3, 32, 32))(x), model(x))  # batch 5: the batch size stays symbolic
    plan = plan_folding(model, (3, 32, 32))
    assert [(p.producer, p.bn) for p in plan.pairs] == [("small", "bn")]
    expected = model(x)
    fold_batchnorm(model, (3, 32, 32))
    assert isinstance(model.bn, nn.Identity) and (model(x) - expected).abs().max().item() < 1e-5


def test_fold_bn_pass_is_registered(teacher):
    cls = PASSES["fold_bn"]
    result = cls(cls.Config()).run(copy.deepcopy(teacher), ctx=None)
    assert result.metrics["folded"] == 19 and result.metrics["left_unfolded"] == []
    result = cls(cls.Config()).run(TwoConsumers().eval(), ctx=None)
    assert result.metrics["folded"] == 0 and "2 consumers" in result.metrics["left_unfolded"][0]


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_distill_bn_modes(teacher, demo_splits, bn):
    """``bn: frozen`` leaves every BN's running statistics untouched (and runs in Tune mode, which needs that);
    ``bn: train`` normalises with batch statistics and so moves them."""
    from compressor.core.train import FinetuneConfig, distill

    student = copy.deepcopy(teacher)
    before = {n: b.clone() for n, b in student.named_buffers() if n.endswith("running_mean")}
    losses = distill(student, teacher, demo_splits.finetune, Preprocess(), FinetuneConfig(steps=2, batch_size=16, bn=bn),
                     progress=False)
    assert len(losses) == 2 and all(np.isfinite(losses))
    moved = [not torch.equal(before[n], b) for n, b in student.named_buffers() if n in before]
    assert (not any(moved)) if bn == "frozen" else all(moved)
    assert not student.training
    with pytest.raises(CompressorError, match=r"fine-tune.bn is 'eval'; choose frozen \| train"):
        distill(student, teacher, demo_splits.finetune, Preprocess(), FinetuneConfig(bn="eval"), progress=False)


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16")
def test_distill_bf16_trains_and_restores_layout(teacher, demo_splits):
    """bf16 autocast trains the student (finite losses, weights move) and leaves both models in their original
    contiguous layout, with the teacher's weights untouched."""
    from compressor.core.train import FinetuneConfig, distill

    student, reference = copy.deepcopy(teacher), copy.deepcopy(teacher)
    config = FinetuneConfig(steps=3, batch_size=16, bn="train", lr=0.01, precision="bf16")
    losses = distill(student, teacher, demo_splits.finetune, Preprocess(), config, progress=False)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not torch.equal(student.conv1.weight, reference.conv1.weight)
    for m in (student, teacher):
        assert all(p.is_contiguous() for p in m.parameters())
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), reference.state_dict().values()))


def test_distill_with_cached_teacher_logits_is_the_same_training(teacher, demo_splits):
    """Without augmentation, logits computed once by ``predict`` replace the per-step teacher forward pass:
    same losses and same trained weights; with augmentation the cache is refused (it would be wrong)."""
    from compressor.core.metrics import predict
    from compressor.core.train import FinetuneConfig, distill

    data = demo_splits.finetune.subset(np.arange(96))
    config = FinetuneConfig(steps=4, batch_size=32, bn="train", lr=0.01, augment=False)
    on_the_fly, cached = copy.deepcopy(teacher), copy.deepcopy(teacher)
    losses = distill(on_the_fly, teacher, data, Preprocess(), config, progress=False)
    logits = torch.from_numpy(predict(teacher, data, Preprocess()))
    assert logits.shape == (96, 10)
    calls = []
    handle = teacher.register_forward_hook(lambda *_: calls.append(1))
    try:
        losses_cached = distill(cached, teacher, data, Preprocess(), config, progress=False, cached_logits=logits)
    finally:
        handle.remove()
    assert calls == []
    np.testing.assert_allclose(losses_cached, losses, rtol=1e-4)
    for a, b in zip(cached.parameters(), on_the_fly.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="augment off"):
        distill(cached, teacher, data, Preprocess(), FinetuneConfig(steps=1, batch_size=32), progress=False,
                cached_logits=logits)


def test_precision_checked_before_work(monkeypatch):
    from compressor.core import train
    from compressor.core.config import from_dict
    from compressor.n2n.search import N2NConfig
    from compressor.passes.prune import PruneConfig

    with pytest.raises(CompressorError, match=r"precision is 'fp16'; choose fp32 \| bf16"):
        from_dict(train.FinetuneConfig, {"precision": "fp16"})
    monkeypatch.setattr(train, "bf16_supported", lambda: False)
    with pytest.raises(CompressorError, match="passes.prune: precision bf16 needs a CPU with native bfloat16"):
        from_dict(PruneConfig, {"precision": "bf16"}, "passes.prune")
    with pytest.raises(CompressorError, match="n2n: precision bf16 needs"):
        from_dict(N2NConfig, {"precision": "bf16"}, "n2n")
    from_dict(train.FinetuneConfig, {"precision": "fp32"})  # fp32 never depends on the CPU


def test_channels_last_only_for_aligned_widths(teacher):
    """oneDNN's channels-last bf16 kernels were measured slower on odd pruned widths, so those stay NCHW."""
    from compressor.core.train import _channels_last_pays
    from compressor.graph.dependency import DependencyGraph

    assert _channels_last_pays(teacher)
    pruned = copy.deepcopy(teacher)
    graph = DependencyGraph(pruned, (3, 32, 32))
    graph.prune([next(g for g in graph.groups() if g.sources == (("layer1.0.conv1", 0),))])
    assert pruned.layer1[0].conv1.out_channels == 15 and not _channels_last_pays(pruned)
