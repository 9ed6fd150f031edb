"""User architectures beyond the zoo (tests/gallery.py), each through prune → fold_bn → quantize → export, with
LRP conservation and a stage-file round trip; and the public-zoo patterns through the command-line pipeline."""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import compressor
from compressor.core.data import Preprocess
from compressor.core.models import load_user_model
from compressor.core.serialize import Factory, load_model, save_model
from compressor.errors import CompressorError
from compressor.graph.dependency import DependencyGraph
from compressor.graph.fusion import fold_batchnorm
from compressor.pruning import lrp
from compressor.pruning.criteria import LRPCriterion, group_scores
from compressor.pruning.prune import conv_widths, select
from compressor.quant.problem import QuantProblem
from compressor.quant.space import QuantConfig
from compressor.runtime.export import export_onnx

from .gallery import GALLERY, build

SHAPE = (3, 32, 32)
GALLERY_FILE = Path(__file__).with_name("gallery.py")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (two oversubscribe a shared CI machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(demo_splits):
    """A few demo images per role: LRP reference, calibration, and the images outputs are compared on."""
    return tuple(split.subset(np.arange(n)) for split, n in
                 ((demo_splits.reference, 20), (demo_splits.calibration, 32), (demo_splits.test, 64)))


@pytest.fixture(scope="module")
def small_data(demo_dataset, tmp_path_factory):
    """A 600 + 200 image slice of the demo data, so a whole pipeline run on a tiny model stays quick."""
    path = tmp_path_factory.mktemp("data") / "small.npz"
    train, test = demo_dataset.train, demo_dataset.test
    np.savez(path, train_images=train.images[:600], train_labels=train.labels[:600],
             test_images=test.images[:200], test_labels=test.labels[:200])
    return path


def _ort(model: onnx.ModelProto | Path, x: torch.Tensor) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]


def _without_biases(model: nn.Module) -> nn.Module:
    """LRP conserves relevance exactly only where no bias absorbs some: zero biases and BN shifts."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            for name in ("bias", "running_mean"):
                if isinstance(getattr(m, name, None), torch.Tensor):
                    getattr(m, name).zero_()
    return model


class Holder(nn.Module):
    """Function attributes: one importable by name, one a closure over a submodule."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv
        self.act = torch.relu  # importable: stored by name, no factory needed
        self.apply_conv = lambda t: conv(t)  # a rebuilt model would call the factory's conv, not its own


@pytest.mark.parametrize("name", list(GALLERY))
def test_gallery_model_through_every_stage(name, images, tmp_path):
    reference, calibration, test = images
    pre = Preprocess()
    x = pre(test.images)
    model = build(name)
    factory = Factory(f"tests.gallery:{name}", functools.partial(build, name))
    factory.remember(model)

    # LRP: with bias-free z rules every join conserves relevance exactly, and nothing is left without a rule.
    composite = lrp.yeom_composite(*pre.bounds(), epsilon=1e-9).register(nn.Conv2d, lambda: lrp.Epsilon(1e-9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, r_in = lrp.relevance_at_convs(_without_biases(model), x[:8], torch.arange(8) % 10, *pre.bounds(),
                                         return_input=True, composite=composite)
        scores = LRPCriterion()(model, reference, pre)  # the pruning criterion's own rules run cleanly too
    assert torch.allclose(r_in.sum(dim=(1, 2, 3)), torch.ones(8), atol=1e-4)

    # Prune: every coupled group is removed (a third of them at a time) and removal computes what masking does.
    graph = DependencyGraph(model, SHAPE)
    groups = graph.groups()
    assert groups
    for k in range(3):
        masked, pruned = copy.deepcopy(model), graph.prune(groups[k::3], copy.deepcopy(model))
        DependencyGraph(masked, SHAPE).mask(groups[k::3])
        assert (masked(x[:8]) - pruned(x[:8])).abs().max().item() < 1e-4
    # Then the pipeline's own selection: least LRP-relevant filters first, a third of them.
    widths = conv_widths(model)
    chosen = select(groups, group_scores(groups, scores), sum(g.size for g in groups) // 3, widths,
                    dict.fromkeys(widths, 1))
    masked, pruned = copy.deepcopy(model), graph.prune(chosen, copy.deepcopy(model))
    DependencyGraph(masked, SHAPE).mask(chosen)
    expected = pruned(x)
    assert (masked(x) - expected).abs().max().item() < 1e-4
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())

    # fold_bn: the folded model computes what the eval-mode model computes.
    folded = fold_batchnorm(copy.deepcopy(pruned), SHAPE)
    assert (folded(x) - expected).abs().max().item() < 1e-4

    # Export: ONNX Runtime reproduces PyTorch.
    path = export_onnx(folded, tmp_path / "model.onnx", SHAPE)
    assert np.abs(_ort(path, x) - expected.detach().numpy()).max() < 1e-4

    # Quantize: the QDQ model is valid, runs in ONNX Runtime and agrees with float.
    problem = QuantProblem(onnx.load(path), calibration, calibration, pre)
    qdq = problem.build(QuantConfig(1000, "max", "asymmetric", "per_channel", "int8"))
    onnx.checker.check_model(qdq, full_check=True)
    int8, fp32 = _ort(qdq, x), expected.detach().numpy()
    # Random weights make logits vary little between images, so the INT8 error is judged against that variation.
    variation = fp32 - fp32.mean(0)
    assert np.linalg.norm(int8 - fp32) < 0.5 * np.linalg.norm(variation)
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9

    # Stage file: saved without pickle and rebuilt (from the factory where the format needs it).
    save_model(folded, tmp_path / "stage.pt", factory=factory)
    loaded, _ = load_model(tmp_path / "stage.pt", ("torch.nn.", "compressor.", "tests.gallery."), factory)
    assert torch.equal(loaded(x), folded(x))


def test_lambda_shortcut_needs_the_factory_and_only_the_named_one(tmp_path):
    model = build("lambda_resnet")
    with pytest.raises(CompressorError, match=r"cannot save LambdaBlock.shortcut of type function: .*--model file.py:factory"):
        save_model(model, tmp_path / "m.pt")
    calls = []
    factory = Factory("tests.gallery:lambda_resnet", lambda: calls.append(1) or build("lambda_resnet"))
    factory.remember(model)
    save_model(model, tmp_path / "m.pt", factory=factory)
    allowed = ("torch.nn.", "compressor.", "tests.gallery.")
    with pytest.raises(CompressorError, match=r"from the factory tests.gallery:lambda_resnet; pass --model"):
        load_model(tmp_path / "m.pt", allowed)
    other = Factory("tests.gallery:shape_branch", lambda: calls.append(2) or build("shape_branch"))
    with pytest.raises(CompressorError, match="pass --model tests.gallery:lambda_resnet"):
        load_model(tmp_path / "m.pt", allowed, other)
    assert calls == []  # neither the file's factory nor another one ran
    loaded, _ = load_model(tmp_path / "m.pt", allowed, factory)
    assert calls == [1]
    x = torch.randn(2, *SHAPE)
    assert torch.equal(loaded(x), model(x))

    with pytest.raises(CompressorError, match="refers to modules or tensors of a model"):
        save_model(Holder(nn.Conv2d(3, 3, 1)), tmp_path / "h.pt", factory=factory)
    holder = Holder(nn.Conv2d(3, 3, 1))
    del holder.apply_conv
    save_model(holder, tmp_path / "h.pt")
    assert load_model(tmp_path / "h.pt", (*allowed, "tests.test_gallery."))[0].act is torch.relu


@pytest.mark.parametrize("factory", ["lambda_resnet", "shape_branch"])
def test_public_zoo_patterns_compress_and_resume_through_the_pipeline(factory, small_data, tmp_path):
    recipe = {
        "model": {"name": f"{GALLERY_FILE}:{factory}"},
        "data": {"path": str(small_data), "validation": 100, "calibration": 100, "reference_per_class": 2},
        "passes": [{"prune": {"target_ratio": 0.2}}, {"n2n": {"removal_iterations": 1, "shrink_iterations": 0,
                                                              "rollouts": 1, "student_steps": 1, "final_steps": 1,
                                                              "subset_size": 64}},
                   {"fold_bn": {}}],
        "export": ["onnx"],
        "bench": {"enabled": False},
        "seed": 0,
    }
    report = compressor.compress(recipe, tmp_path / "out", progress=False)
    assert [s.stage for s in report.stages] == ["teacher", "01_prune", "02_n2n", "03_fold_bn", "export_onnx"]
    assert report.stages[1].params < report.stages[0].params
    loaded = load_user_model(f"{GALLERY_FILE}:{factory}", input_shape=SHAPE)
    model, _ = load_model(tmp_path / "out" / "stages" / "03_fold_bn.pt", loaded.allowed_modules, loaded.factory)
    x = torch.randn(4, *SHAPE)
    assert model(x).shape == (4, 10)
    resumed = compressor.compress(recipe, tmp_path / "out", resume=True, progress=False)
    assert all(s.details.get("resumed") for s in resumed.stages[1:4])


def test_channels_left_unprunable_are_the_known_limits():
    """Every dense conv of the gallery is prunable except where coupling is not modelled: the input of a grouped
    (not depthwise) conv, a product with a gate, a conv called twice and what feeds it, and a branch the input
    shape never takes."""
    limits = {
        "resnext": {f"layers.{i}.conv1.0" for i in range(3)},
        "senet": {f"layers.{i}.{c}" for i in range(3) for c in ("conv.0", "fc2")},
        "twice_called": {"stem.0", "shared"},
        "shape_branch": {"stem_large.0"},
    }
    for name in GALLERY:
        model = build(name)
        sources = {conv for g in DependencyGraph(model, SHAPE).groups() for conv, _ in g.sources}
        dense = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}
        assert dense - sources == limits.get(name, set()), name
