"""N2N (Ashok et al., ICLR 2018): policies, removal units, reward, and a short seeded search on real data."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compressor.core.config import from_dict
from compressor.core.data import Preprocess
from compressor.core.executors import SerialExecutor
from compressor.core.metrics import count_params
from compressor.core.serialize import load_model, save_model
from compressor.core.zoo import ZOO
from compressor.errors import CompressorError
from compressor.graph.modules import ChannelPadShortcut
from compressor.n2n.layers import STATE_DIM, Candidate, Measurement, build_student, describe_layers, remove_units
from compressor.n2n.policy import RemovalPolicy, ShrinkPolicy
from compressor.n2n.reward import RewardFunction, compression_reward, constraint_penalty
from compressor.n2n.search import N2NConfig, N2NSearch
from compressor.passes import PASSES, Context
from compressor.runtime.export import export_onnx, ort_session

INPUT = (3, 32, 32)


def _bn_params(c: int) -> int:
    return 2 * c


def test_policy_output_shapes():
    gen = torch.Generator().manual_seed(0)
    states, mask = torch.rand(7, STATE_DIM), torch.tensor([0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    removal = RemovalPolicy()
    assert removal(states.expand(3, -1, -1)).shape == (3, 7, 2)
    actions = removal.sample(states, mask, 5, gen)
    assert actions.shape == (5, 7) and set(actions.unique().tolist()) <= {0, 1}
    assert (actions[:, ~mask] == 1).all()
    logp = removal.log_prob(states, mask, actions)
    assert logp.shape == (5,) and logp.requires_grad and (logp < 0).all()

    shrink = ShrinkPolicy(hidden=30)
    idx = shrink.sample(states, mask, 4, gen)
    assert idx.shape == (4, 7) and int(idx.max()) < len(shrink.scales)
    assert (shrink.scales[idx[:, ~mask]] == 1.0).all()
    lp = shrink.log_prob(states, mask, idx)
    assert lp.shape == (4,) and torch.isfinite(lp).all()
    # Length-agnostic: the same weights read a 20-layer and a 56-layer sequence (policy transfer).
    for model in (ZOO["cifar_resnet20"](), ZOO["cifar_resnet56"]()):
        table = describe_layers(model)
        assert removal.sample(table.states(), table.decision_mask(), 2, gen).shape == (2, len(table.layers))


def test_layer_table_of_resnet20():
    table = describe_layers(ZOO["cifar_resnet20"]())
    assert len(table.layers) == 20 and len(table.units) == 9
    first = table.layers[1]
    assert (first.name, first.unit, first.decides, first.skip_start, first.skip_end) == (
        "layer1.0.conv1", "layer1.0", True, True, False)
    assert table.layers[2].skip_end and not table.layers[2].decides
    assert table.fixed_layers() == ["conv1", "linear"]
    assert int(table.decision_mask().sum()) == 9


def test_fixed_layers_never_removed():
    model = ZOO["cifar_resnet20"]()
    table = describe_layers(model, fixed=("layer2.1", "layer3.0.conv2"))
    assert "layer2.1" not in table.units and "layer3.0" not in table.units
    policy = RemovalPolicy()
    with torch.no_grad():
        policy.head.bias.copy_(torch.tensor([3.0, -3.0]))  # strongly prefer "remove"
    actions = policy.sample(table.states(), table.decision_mask(), 16, torch.Generator().manual_seed(1))
    assert (actions == 0).sum() > 0
    fixed = {"conv1", "linear", "layer2.1.conv1", "layer2.1.conv2", "layer3.0.conv1", "layer3.0.conv2"}
    for row in actions:
        removed = [layer.unit for layer, a in zip(table.layers, row.tolist()) if layer.decides and a == 0]
        child = remove_units(model, table, removed)
        names = {n for n, m in child.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        assert fixed <= names
        assert child(torch.zeros(1, *INPUT)).shape == (1, 10)


def test_plain_chain_removes_only_shape_preserving_convs():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 5, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()
    table = describe_layers(model)
    assert table.units == {"3": ("3", "4", "5"), "8": ("8", "9")}
    child = remove_units(model, table, ["3", "8"])
    assert all(isinstance(child[i], nn.Identity) for i in (3, 4, 5, 8, 9))
    assert child(torch.zeros(2, *INPUT)).shape == (2, 10)


def test_residual_blocks_are_found_from_the_graph_not_attribute_names():
    from .gallery import build

    # Plain `+`/`+=` joins, an identity shortcut that is a lambda or an empty Sequential, projection shortcuts.
    model = build("lambda_resnet")
    table = describe_layers(model, input_shape=INPUT)
    assert table.skips == {"layer1.0": None, "layer1.1": None, "layer2.0": "layer2.0.shortcut", "layer2.1": None}
    child = remove_units(model, table, ["layer1.0", "layer2.0"])
    assert isinstance(child.layer1[0], nn.Identity)
    assert type(child.layer2[0]) is nn.Sequential and len(child.layer2[0]) == 2  # the conv + BN projection
    assert child(torch.zeros(2, *INPUT)).shape == (2, 10)
    assert describe_layers(build("resnext"), input_shape=INPUT).skips == {
        "layers.0": "layers.0.shortcut", "layers.1": None, "layers.2": "layers.2.shortcut"}
    assert describe_layers(build("mobilenetv2"), input_shape=INPUT).skips == {"blocks.0": None, "blocks.2": None}
    # A concatenation, a gate, or a sum followed by more layers is not a block whose removal leaves a shortcut.
    for name in ("densenet", "senet", "googlenet"):
        assert describe_layers(build(name), input_shape=INPUT).skips == {}

    class SumThenConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.b(x + self.a(x))

    assert describe_layers(nn.Sequential(SumThenConv(), nn.Flatten(), nn.Linear(3072, 10))).skips == {}


def test_reward_formula_edge_cases():
    assert compression_reward(80.0, 80.0, 100, 100) == 0.0
    assert compression_reward(80.0, 80.0, 0, 100) == 1.0
    assert compression_reward(40.0, 80.0, 0, 100) == 0.5
    rewards = [compression_reward(70.0, 80.0, p, 100) for p in range(100, -1, -5)]
    assert all(b > a for a, b in zip(rewards, rewards[1:]))
    f = RewardFunction(80.0, 1000, 5000, max_params=400)
    assert f(Measurement(False), 0) == -1.0
    ok = Measurement(True, 80.0, 400, 2000)
    assert f(ok, 0) == pytest.approx(0.6 * 1.4)
    over = Measurement(True, 80.0, 500, 2000)
    raw = 0.5 * 1.5
    assert f(over, 0) == pytest.approx(raw)  # ε = 1 at the first epoch
    assert f(over, 7.5) == pytest.approx((0.5**4 - 1) + 0.5**4 * raw)
    assert f(over, 15) == -1.0 and f(over, 30) == -1.0  # ε stays 0 after the horizon
    assert constraint_penalty(0.7, 0.0) == pytest.approx(0.7)
    macs = RewardFunction(80.0, 1000, 5000, size_measure="macs")
    assert macs(ok, 0) == pytest.approx(0.6 * 1.4)  # C = 1 − 2000/5000


def test_size_floor_penalises_students_below_it():
    band = RewardFunction(80.0, 1000, 5000, max_params=500, min_params=400)
    inside, below = Measurement(True, 80.0, 450, 2000), Measurement(True, 80.0, 300, 2000)
    assert band(inside, 30) == pytest.approx(0.55 * 1.45)
    assert band(below, 0) == pytest.approx(0.7 * 1.3)  # ε = 1 at the first epoch, as for a maximum
    assert band(below, 15) == -1.0
    assert RewardFunction(80.0, 1000, 5000, min_macs=2500)(inside, 15) == -1.0
    with pytest.raises(CompressorError, match="min_params"):
        from_dict(N2NConfig, {"min_params": 600, "max_params": 500}, "n2n")


def test_removed_blocks_export_with_expected_params(tmp_path, teacher):
    table = describe_layers(teacher)
    child = remove_units(teacher, table, ["layer1.1", "layer2.0"])
    assert isinstance(child.layer1[1], nn.Identity)
    assert isinstance(child.layer2[0], ChannelPadShortcut) and child.layer2[0].stride == 2
    identity_block = 2 * (16 * 16 * 9) + 2 * _bn_params(16)
    stride_block = 16 * 32 * 9 + 32 * 32 * 9 + 2 * _bn_params(32)
    assert count_params(teacher) == 269_722
    assert count_params(child) == 269_722 - identity_block - stride_block == 251_098
    path = export_onnx(child, tmp_path / "child.onnx", INPUT)
    x = torch.randn(4, *INPUT)
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = child(x).numpy()
        # Independent reference: the block is the option-A shortcut, applied by hand.
        out = teacher.relu(teacher.bn1(teacher.conv1(x)))
        out = teacher.layer1[2](teacher.layer1[0](out))
        out = torch.nn.functional.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
        out = teacher.layer3(teacher.layer2[2](teacher.layer2[1](out)))
        manual = teacher.linear(teacher.flatten(teacher.pool(out))).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(ref, manual, atol=1e-5)
    loaded, _ = load_model(save_model(child, tmp_path / "child.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), ref, atol=1e-6)


def test_shrink_keeps_channels_by_importance(teacher):
    table = describe_layers(teacher)
    with torch.no_grad():  # make filters 0-7 of layer3.0.conv1 clearly the most important
        teacher.layer3[0].conv1.weight[:8] *= 100.0
        kept = teacher.layer3[0].conv1.weight[:8].clone()
    student = build_student(teacher, table, Candidate.make([], {"layer3.0.conv1": 0.125}), INPUT)
    assert student.layer3[0].conv1.out_channels == 8 and student.layer3[0].conv2.in_channels == 8
    torch.testing.assert_close(student.layer3[0].conv1.weight, kept)
    assert student(torch.zeros(1, *INPUT)).shape == (1, 10)


class CountingExecutor(SerialExecutor):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def map(self, fn, tasks, shared=None, names=None):  # noqa: ANN001, ANN201
        self.calls += len(tasks)
        return super().map(fn, tasks, shared, names)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The search trains many tiny students; one intra-op thread is faster on a shared 2-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ctx(splits, teacher, out_dir, seed=0) -> Context:
    return Context(splits, teacher, Preprocess(), INPUT, out_dir, seed=seed, progress=False)


TINY = dict(removal_iterations=2, shrink_iterations=1, rollouts=2, student_steps=2, student_batch_size=32,
            subset_size=256, final_steps=2, tune_mode=False)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, demo_splits):
    teacher = ZOO["cifar_resnet20"]()
    teacher.load_state_dict(torch.load(Path(__file__).parents[1] / "demo" / "cifar10_resnet20.pt", weights_only=True))
    search = N2NSearch(teacher.eval(), _ctx(demo_splits, teacher, tmp_path_factory.mktemp("n2n_ref")), N2NConfig(**TINY))
    return search, search.run()


def test_short_search_is_reproducible(tmp_path, demo_splits, teacher, reference_run):
    ref, ref_result = reference_run
    history = ref.history()
    assert [h["stage"] for h in history] == ["removal", "removal", "shrink"]
    assert all(-1.0 <= r <= 1.0 for h in history for r in h["rewards"])
    assert any(h["candidates"][0]["scales"] for h in history[2:])  # stage 2 really shrinks
    assert (ref.out_dir / N2NSearch.PLOT).stat().st_size > 0
    assert ref_result.details["best"]["params"] == count_params(ref_result.model)

    again = N2NSearch(teacher, _ctx(demo_splits, teacher, tmp_path / "again"), N2NConfig(**TINY))
    result = again.run()
    assert again.history() == history
    assert result.candidate == ref_result.candidate
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(v, ref_result.model.state_dict()[k])


def test_resume_continues_from_checkpoint(tmp_path, demo_splits, teacher, reference_run):
    ref, _ = reference_run
    part = N2NSearch(teacher, _ctx(demo_splits, teacher, tmp_path),
                     N2NConfig(**dict(TINY, removal_iterations=1, shrink_iterations=0)))
    part.search()
    assert not part.resumed and len(part.history()) == 1
    executor = CountingExecutor()
    resumed = N2NSearch(teacher, _ctx(demo_splits, teacher, tmp_path), N2NConfig(**TINY), executor=executor)
    resumed.search()
    assert resumed.resumed and resumed.history() == ref.history()
    assert executor.calls <= 2 * TINY["rollouts"]  # only the two missing iterations' new candidates were trained
    for a, b in zip(resumed.shrink.parameters(), ref.shrink.parameters()):
        torch.testing.assert_close(a, b)
    # Other settings (here the seed) do not continue someone else's search.
    other = N2NSearch(teacher, _ctx(demo_splits, teacher, tmp_path, seed=1), N2NConfig(**dict(TINY, rollouts=1)))
    assert not other._restore()


def test_policy_transfer_and_pass_registration(tmp_path, demo_splits, teacher):
    src = N2NSearch(teacher, _ctx(demo_splits, teacher, tmp_path / "src"), N2NConfig(**TINY))
    with torch.no_grad():
        src.removal.head.bias.add_(0.5)
    path = src.save_policy(tmp_path / "policy.pt")
    other = ZOO["cifar_resnet32"]().eval()
    dst = N2NSearch(other, _ctx(demo_splits, teacher, tmp_path / "dst"), N2NConfig(**dict(TINY, policy_init=str(path))))
    torch.testing.assert_close(dst.removal.head.bias, src.removal.head.bias)
    assert dst.table.decision_mask().sum() == 15
    assert PASSES["n2n"].Config is N2NConfig and dataclasses.is_dataclass(N2NConfig)
    cfg = from_dict(N2NConfig, {"scales": [0.5, 1], "fixed": ["layer1.0"], "max_params": 1000}, "passes[0].n2n")
    assert cfg.scales == (0.5, 1.0) and cfg.fixed == ("layer1.0",) and cfg.max_params == 1000
    with pytest.raises(CompressorError):
        from_dict(N2NConfig, {"size_measure": "flops"}, "n2n")


def test_pass_writes_search_files_and_plain_details(tmp_path, demo_splits, teacher):
    config = N2NConfig(**dict(TINY, removal_iterations=1, shrink_iterations=0, rollouts=1, final_steps=0))
    result = PASSES["n2n"](config).run(teacher, _ctx(demo_splits, teacher, tmp_path))
    for name in (N2NSearch.CHECKPOINT, N2NSearch.POLICY, N2NSearch.PLOT):
        assert (tmp_path / "n2n" / name).is_file()
    details = json.loads(json.dumps(result.metrics))
    assert result.plots["rewards"] == tmp_path / "n2n" / N2NSearch.PLOT
    assert details["budget"]["candidates_measured"] == 1 and len(details["history"]) == 1
    assert details["best"]["params"] == count_params(result.model)
    assert details["teacher"]["params"] == 269_722
    assert details["best"]["within_limits"]


def test_search_warns_when_no_student_meets_the_limits(tmp_path, demo_splits, teacher):
    config = N2NConfig(**dict(TINY, removal_iterations=1, shrink_iterations=0, rollouts=1, final_steps=0,
                              min_params=10**9))
    with pytest.warns(UserWarning, match="no student of the search met the size limits"):
        result = N2NSearch(teacher, _ctx(demo_splits, teacher, tmp_path), config).run()
    assert not result.details["best"]["within_limits"]


def test_unaugmented_students_run_the_teacher_once(tmp_path, demo_splits, teacher):
    """student_augment: false computes the teacher's logits on the subset once for all students; with
    augmentation the teacher runs in every student step."""
    calls = {}
    for augment in (True, False):
        config = N2NConfig(**dict(TINY, removal_iterations=1, shrink_iterations=0, rollouts=2, student_steps=3,
                                  final_steps=0, student_augment=augment))
        distiller = copy.deepcopy(teacher)  # students are built from ``teacher``; only this one teaches
        search = N2NSearch(teacher, _ctx(demo_splits, distiller, tmp_path / str(augment)), config)
        calls[augment] = 0

        def counted(*_, key=augment):
            calls[key] += 1

        distiller.register_forward_hook(counted)
        search.search()
        assert len(search.measurements) == 2
    assert calls == {True: 2 * 3, False: 1}  # 256 subset images: one batch of the logit pass


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_bn_mode_decides_whether_students_refit_batchnorm(tmp_path, demo_splits, teacher, bn):
    """Frozen BN keeps the teacher's running statistics through search and fine-tune; train BN re-fits them."""
    config = N2NConfig(**dict(TINY, removal_iterations=1, shrink_iterations=0, rollouts=1, bn=bn, final_bn=bn))
    result = N2NSearch(teacher, _ctx(demo_splits, teacher, tmp_path), config).run()
    moved = not torch.equal(result.model.bn1.running_mean, teacher.bn1.running_mean)
    assert moved == (bn == "train")
    with pytest.raises(CompressorError, match="bn"):
        from_dict(N2NConfig, {"final_bn": "batch"}, "n2n")


def test_reinforce_raises_the_probability_of_the_rewarded_action(tmp_path, demo_splits, teacher):
    """Through the executor, a synthetic reward pays exactly the students that remove one chosen block: REINFORCE
    must make removing that block more likely."""
    search = N2NSearch(teacher, _ctx(demo_splits, teacher, tmp_path), N2NConfig(**dict(TINY, rollouts=8)))
    target = next(layer.unit for layer in search.table.layers if layer.decides)

    class Rewarding(SerialExecutor):
        def map(self, fn, tasks, shared=None, names=None):  # noqa: ANN001, ANN201
            return [Measurement(True, 100.0 * (target in c.remove), 1, 1) for c in tasks]

    search.executor = Rewarding()
    search.reward = lambda m, epoch: m.accuracy / 100
    states, mask = search.table.states(), search.table.decision_mask()
    index = next(i for i, layer in enumerate(search.table.layers) if layer.unit == target and layer.decides)

    def p_remove_target() -> float:
        with torch.no_grad():
            return float(torch.softmax(search.removal(states.expand(1, -1, -1)), -1)[0, index, 0])

    before = p_remove_target()
    search._stage("removal", 25, search.removal, search.removal_opt, states, mask, search._removal_candidate)
    assert p_remove_target() > before + 0.2
