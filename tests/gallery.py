"""A gallery of small CIFAR architectures (3×32×32 in, 10 classes out) written the way users write them.

Each model uses the patterns of a family users bring rather than the zoo's explicit ``Add`` modules: plain
``a + b`` and ``torch.cat`` joins, ``F.*`` calls, grouped convolutions, gates, a module called twice, and three
patterns of public CIFAR model code (an identity shortcut stored as a ``lambda``, a forward that branches on the
input's shape, an inception block). Widths are tiny and deliberately not multiples of 4, so the INT8 emission's
input-channel padding meets tensors read by several convolutions. Random weights; :func:`build` gives every
BatchNorm non-trivial statistics so folding is a real test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class VGG(nn.Module):
    """Plain chain with max-pools; the head flattens a 4×4 map into Linear → BatchNorm1d → ReLU → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(3, 6), nn.ReLU(inplace=True), *conv_bn(6, 6), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            *conv_bn(6, 10), nn.ReLU(inplace=True), nn.MaxPool2d(2), *conv_bn(10, 10), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(10 * 4 * 4, 24), nn.BatchNorm1d(24), nn.ReLU(),
                                        nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DenseLayer(nn.Module):
    """Pre-activation bottleneck (BN → ReLU → 1×1 → BN → ReLU → 3×3) whose output is concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(2 * growth), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class DenseNet(nn.Module):
    """Two dense blocks of two layers with a transition (BN → ReLU → 1×1 → avg-pool) between them."""

    def __init__(self, growth: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 10, 3, padding=1, bias=False)
        self.block1 = nn.Sequential(DenseLayer(10, growth), DenseLayer(10 + growth, growth))
        width = 10 + 2 * growth
        self.trans = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 10, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = nn.Sequential(DenseLayer(10, growth), DenseLayer(10 + growth, growth))
        self.bn = nn.BatchNorm2d(width)
        self.linear = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block2(self.trans(self.block1(self.stem(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(torch.flatten(out, 1))


class GroupedBlock(nn.Module):
    """ResNeXt-style: 1×1 → grouped 3×3 → 1×1 beside a 1×1 projection shortcut, joined by a plain ``+``."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 2) -> None:
        super().__init__()
        mid = 2 * groups * 3
        self.conv1, self.conv2 = conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=groups)
        self.conv3 = conv_bn(mid, cout, 1)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        return F.relu(out + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 6), nn.ReLU())
        self.layers = nn.Sequential(GroupedBlock(6, 10, 1), GroupedBlock(10, 10, 1), GroupedBlock(10, 14, 2))
        self.linear = nn.Linear(14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class Inception(nn.Module):
    """GoogLeNet's block: 1×1 | 1×1 → 3×3 | 1×1 → 3×3 → 3×3 | max-pool → 1×1, concatenated on channels."""

    def __init__(self, cin: int, b1: int, b2: tuple[int, int], b3: tuple[int, int], b4: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(*conv_bn(cin, b1, 1), nn.ReLU(True))
        self.b2 = nn.Sequential(*conv_bn(cin, b2[0], 1), nn.ReLU(True), *conv_bn(b2[0], b2[1]), nn.ReLU(True))
        self.b3 = nn.Sequential(*conv_bn(cin, b3[0], 1), nn.ReLU(True), *conv_bn(b3[0], b3[1]), nn.ReLU(True),
                                *conv_bn(b3[1], b3[1]), nn.ReLU(True))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *conv_bn(cin, b4, 1), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    """The public CIFAR GoogLeNet's layout at a tiny width; the first block reads the RGB input directly."""

    def __init__(self) -> None:
        super().__init__()
        self.a3 = Inception(3, 6, (5, 6), (3, 6), 6)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.b3 = Inception(24, 6, (5, 10), (3, 6), 6)
        self.avgpool = nn.AvgPool2d(16)
        self.linear = nn.Linear(28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b3(self.maxpool(self.a3(x)))
        out = self.avgpool(out)
        return self.linear(out.view(out.size(0), -1))


class SEBlock(nn.Module):
    """conv → BN → ReLU, then a squeeze-and-excitation gate: x · σ(W₂ ReLU(W₁ avg(x)))."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU())
        self.fc1, self.fc2 = nn.Conv2d(cout, 3, 1), nn.Conv2d(3, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(out, 1)))))
        return out * w


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(SEBlock(3, 6), SEBlock(6, 10, 2), SEBlock(10, 10, 2))
        self.pool, self.linear = nn.AdaptiveAvgPool2d(1), nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.layers(x)).flatten(1))


class InvertedResidual(nn.Module):
    """MobileNetV2: 1×1 expand → depthwise 3×3 → 1×1 project, plus the input when shapes match (a plain ``+``)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int = 3) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            *conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True), *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(inplace=True), *conv_bn(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 6), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(InvertedResidual(6, 6, 1), InvertedResidual(6, 10, 2), InvertedResidual(10, 10, 1))
        self.head = nn.Sequential(*conv_bn(10, 18, 1), nn.ReLU6(inplace=True))
        self.linear = nn.Linear(18, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.blocks(self.stem(x)))
        return self.linear(out.mean((2, 3)))


class TwiceCalled(nn.Module):
    """A shape-preserving conv applied twice (shared weights) and one ReLU module reused after every conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 6)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv = conv_bn(6, 10, 3, 2)
        self.pool, self.linear = nn.AdaptiveAvgPool2d(1), nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.stem(x))
        out = self.relu(self.shared(self.relu(self.shared(out))))
        out = self.relu(self.conv(out))
        return self.linear(torch.flatten(self.pool(out), 1))


class Functional(nn.Module):
    """Only convs, BNs and the Linear are modules; activations, pooling, dropout and flattening are ``F.*`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 10, 3, padding=1), nn.BatchNorm2d(10)
        self.conv3 = nn.Conv2d(10, 10, 3, padding=1)
        self.linear = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        out = F.avg_pool2d(F.relu(self.bn2(self.conv2(out))), 2)
        out = F.relu6(self.conv3(out))
        out = F.dropout(F.adaptive_avg_pool2d(out, 1), 0.2, self.training)
        return self.linear(torch.flatten(out, 1))


class LambdaBlock(nn.Module):
    """A public CIFAR ResNet's block: the identity shortcut is ``lambda x: x``, a plain attribute, not a module."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout)
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn(cin, cout, 1, stride)
        else:
            self.shortcut = lambda x: x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        out += self.shortcut(x)
        return F.relu(out)


class LambdaResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 6), nn.ReLU())
        self.layer1 = nn.Sequential(LambdaBlock(6, 6, 1), LambdaBlock(6, 6, 1))
        self.layer2 = nn.Sequential(LambdaBlock(6, 10, 2), LambdaBlock(10, 10, 1))
        self.linear = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(self.stem(x)))
        return self.linear(F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1))


class ShapeBranch(nn.Module):
    """A public model zoo's forward that picks its stem by the input's size (ImageNet 224 vs CIFAR 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem_small = nn.Sequential(*conv_bn(3, 6), nn.ReLU())
        self.stem_large = nn.Sequential(*conv_bn(3, 6, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.body = nn.Sequential(*conv_bn(6, 10, 3, 2), nn.ReLU(), *conv_bn(10, 10), nn.ReLU())
        self.linear = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        out = self.stem_small(x) if h <= 64 else self.stem_large(x)
        out = self.body(out)
        n, c = out.shape[:2]
        return self.linear(F.adaptive_avg_pool2d(out, 1).reshape(n, c))


GALLERY = {
    "vgg": VGG, "densenet": DenseNet, "resnext": ResNeXt, "googlenet": GoogLeNet, "senet": SENet,
    "mobilenetv2": MobileNetV2, "twice_called": TwiceCalled, "functional": Functional,
    "lambda_resnet": LambdaResNet, "shape_branch": ShapeBranch,
}


def build(name: str, seed: int = 0) -> nn.Module:
    """Gallery model ``name`` with seeded random weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = GALLERY[name]()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def lambda_resnet() -> nn.Module:
    """Factory for ``--model tests/gallery.py:lambda_resnet``."""
    return build("lambda_resnet")


def shape_branch() -> nn.Module:
    """Factory for ``--model tests/gallery.py:shape_branch``."""
    return build("shape_branch")
