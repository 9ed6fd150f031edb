"""The model zoo: CIFAR networks whose state_dict keys load the shared teachers unchanged.

CIFAR ResNets follow He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), section 4.2, with
the parameter-free "option A" shortcut. MobileNetV2 follows Sandler et al. (CVPR 2018) with the CIFAR stem
(stride-1 first convolution). Residual additions are explicit ``Add`` modules and the option-A shortcut is an
explicit ``ChannelPadShortcut`` module, so that LRP can attach a rule to the addition and the dependency graph
can rewrite the shortcut's padding when channels are removed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from compressor.graph.modules import Add, ChannelPadShortcut


class BasicBlock(nn.Module):
    """conv3x3 → BN → ReLU → conv3x3 → BN, plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ChannelPadShortcut(stride, planes // 4, planes // 4)
        else:
            self.shortcut = nn.Identity()
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add(out, self.shortcut(x)))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2): three stages of n BasicBlocks with 16, 32, 64 channels."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(out)))


class InvertedResidual(nn.Module):
    """1x1 expand → BN → ReLU6 → 3x3 depthwise → BN → ReLU6 → 1x1 project → BN (+ input when shapes match)."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        hidden = in_planes * expansion
        self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6()
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.add = Add() if stride == 1 and in_planes == out_planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.add(out, x) if self.add is not None else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs; ``width`` scales every block's channels (stem fixed at 16)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width: float = 0.5, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU6()
        blocks, in_planes = [], 16
        for t, c, n, s in self.SETTINGS:
            out_planes = max(8, int(c * width + 4) // 8 * 8)
            for i in range(n):
                blocks.append(InvertedResidual(in_planes, out_planes, t, s if i == 0 else 1))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.relu2 = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(self.layers(out))))
        return self.linear(self.flatten(self.pool(out)))


ZOO: dict[str, Callable[[], nn.Module]] = {
    "cifar_resnet20": lambda: CifarResNet(3),
    "cifar_resnet32": lambda: CifarResNet(5),
    "cifar_resnet44": lambda: CifarResNet(7),
    "cifar_resnet56": lambda: CifarResNet(9),
    "cifar_mobilenetv2": lambda: CifarMobileNetV2(0.5),
}
