"""CIFAR networks: ``plain``, ``resnet_v1`` (He et al. 2015), ``resnet_v2`` (He et al. 2016).

All three share the layout of He et al. 2015, section 4.2: a 3x3 convolution with 16 filters,
three stages of 16/32/64 filters (the first block of stages 2 and 3 halves the map with stride
2), global average pooling and a linear classifier of ``num_classes`` outputs. ``width``
multiplies every filter count.

Designed for CIFAR's 32x32 images, on which the stages work on 32x32/16x16/8x8 maps, the nets
are fully convolutional up to the global average pooling, so they take any input size (the
project's inputs are square, ``data.image_size``). Their total stride is 4 (the last stage
works on maps a quarter of the input's side), so an input should be at least 4x4; smaller ones
still run, but their last stages see mostly padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.core.depths import (
    BASIC_DEPTHS,
    BASIC_RULE,
    BOTTLENECK_DEPTHS,
    MAX_DEPTH_RULE,
    basic_blocks,
    bottleneck_blocks,
    too_deep,
)
from resnetlab.core.errors import invalid
from resnetlab.models.registry import (
    check_bool,
    check_choice,
    check_positive_int,
    register_model,
)

__all__ = [
    "BasicBlockV1",
    "CifarResNet",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ZeroPadShortcut",
    "he_init",
    "plain",
    "resnet_v1",
    "resnet_v2",
]

# Filters of the three stages for width=1 (bottleneck stages output 4x these).
_STAGE_FILTERS = (16, 32, 64)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every convolution is followed (or, pre-activation, preceded) by BatchNorm.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def he_init(model: nn.Module) -> None:
    """Kaiming-normal convolutions, BatchNorm to (weight 1, bias 0); linear layers keep defaults.

    ``mode="fan_out"`` is the backward-pass variant of He et al. 2015 ("Delving deep"), the one
    torchvision uses; with BatchNorm after every convolution either variant gives the same
    forward signal. The classifier is not followed by a ReLU, so PyTorch's default (uniform,
    fan-in scaled) initialisation is kept for it, as torchvision does.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: identity, subsampled by ``stride``, with zero channels appended.

    Parameter-free, which is why a ResNet with option A has exactly the parameters of its plain
    twin (He et al. 2015, section 4.2).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # The pad tuple runs from the last dimension backwards: (W, W, H, H, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


class BasicBlockV1(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU (He et al. 2015, Fig. 2).

    ``shortcut=None`` removes the shortcut, giving the block of the plain network.
    """

    expansion = 1

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, shortcut: str | None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None
        if shortcut is None:
            self.shortcut = None
        elif stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                _conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, add the shortcut (He et al. 2016, Fig. 4e).

    Where the shape changes the shortcut is a 1x1 projection of the *pre-activated* input, as in
    the authors' code; otherwise it is the identity on the raw input, so the signal path from
    block to block contains no nonlinearity.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _conv1x1(in_channels, out_channels, stride)

    def zero_init_last(self) -> None:
        # The branch ends in a convolution, not a BatchNorm; zeroing it makes the block the
        # identity at initialisation, which is what zero-initialising the last BN does in v1.
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        skip = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + skip


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (x4 channels), add the shortcut.

    The stride sits on the 3x3 convolution so no activations are skipped by a strided 1x1.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _conv1x1(in_channels, out_channels, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        skip = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + skip


BlockFactory = Callable[[int, int, int], nn.Module]


class CifarResNet(nn.Module):
    """Stem, three stages of ``blocks_per_stage`` blocks, global average pool, linear with
    ``num_classes`` outputs; any input size (total stride 4, see the module docstring).

    ``make_block(in_channels, planes, stride)`` builds one block whose output has
    ``planes * expansion`` channels. ``preact`` selects the v2 layout: the stem is a bare
    convolution and a final BN-ReLU precedes the pooling, because pre-activation blocks leave
    their output un-normalised.
    """

    def __init__(
        self,
        make_block: BlockFactory,
        blocks_per_stage: int,
        expansion: int,
        width: int = 1,
        *,
        num_classes: int,
        preact: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.blocks_per_stage = blocks_per_stage
        stem = _STAGE_FILTERS[0] * width
        self.conv1 = _conv3x3(3, stem)
        self.bn1 = None if preact else nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        in_channels = stem
        stages = []
        for index, filters in enumerate(_STAGE_FILTERS):
            planes = filters * width
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(make_block(in_channels, planes, stride if block_index == 0 else 1))
                in_channels = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn_final = nn.BatchNorm2d(in_channels) if preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

        he_init(self)
        if zero_init_residual:
            for module in self.modules():
                if hasattr(module, "zero_init_last"):
                    module.zero_init_last()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.relu(self.bn1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.bn_final is not None:
            x = self.relu(self.bn_final(x))
        return self.fc(self.avgpool(x).flatten(1))


# --- builders -------------------------------------------------------------------------------


def _basic_blocks(model: str, depth: object) -> int:
    """Blocks per stage of a basic-block net (depth 6n+2), or a ConfigError naming ``model``."""
    n = basic_blocks(depth)
    if n is None:
        raise invalid(f"{model}.depth", depth, BASIC_DEPTHS)
    if too_deep(depth):
        raise invalid(f"{model}.depth", depth, MAX_DEPTH_RULE)
    return n


@register_model("plain")
def plain(
    depth: int, width: int = 1, *, num_classes: int, zero_init_residual: bool = False
) -> CifarResNet:
    """Plain net of depth 6n+2: the stacks of ``resnet_v1`` with the shortcuts removed.

    ``zero_init_residual`` exists so one config key serves every CIFAR net, but only ``False`` is
    accepted: with no shortcut, a zeroed last BatchNorm would zero every block's output.
    """
    n = _basic_blocks("plain", depth)
    width = check_positive_int("plain", "width", width)
    num_classes = check_positive_int("plain", "num_classes", num_classes)
    if check_bool("plain", "zero_init_residual", zero_init_residual):
        raise invalid(
            "plain.zero_init_residual",
            zero_init_residual,
            "false (a plain net has no shortcut, so zeroing the last BatchNorm of a block would "
            "zero the signal of every block)",
        )
    return CifarResNet(
        lambda cin, planes, stride: BasicBlockV1(cin, planes, stride, shortcut=None),
        n,
        expansion=1,
        width=width,
        num_classes=num_classes,
    )


@register_model("resnet_v1")
def resnet_v1(
    depth: int,
    shortcut: str = "A",
    width: int = 1,
    *,
    num_classes: int,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """ResNet of depth 6n+2 with basic blocks (He et al. 2015, section 4.2).

    ``shortcut="A"`` (the paper's CIFAR choice) is a parameter-free identity that subsamples and
    zero-pads channels where the shape changes; ``"B"`` uses a 1x1 projection + BN there.
    """
    n = _basic_blocks("resnet_v1", depth)
    shortcut = check_choice("resnet_v1", "shortcut", shortcut, ["A", "B"])
    width = check_positive_int("resnet_v1", "width", width)
    num_classes = check_positive_int("resnet_v1", "num_classes", num_classes)
    zero_init_residual = check_bool("resnet_v1", "zero_init_residual", zero_init_residual)
    return CifarResNet(
        lambda cin, planes, stride: BasicBlockV1(cin, planes, stride, shortcut=shortcut),
        n,
        expansion=1,
        width=width,
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
    )


@register_model("resnet_v2")
def resnet_v2(
    depth: int,
    block: str | None = None,
    width: int = 1,
    *,
    num_classes: int,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    ``block="basic"`` takes depth 6n+2 (two 3x3 convs per block); ``block="bottleneck"`` takes
    depth 9n+2 (1x1-3x3-1x1 with 4x expansion, stages output 64/128/256 channels). By default
    (``block=None``) a depth of the form 9n+2 gets bottleneck blocks and any other 6n+2 depth
    basic blocks. Many depths are both (every 18k+2: 20, 38, 56, 110, 164, ...), and then the
    default is bottleneck: ``depth=164`` is the paper's ResNet-164 (1.7M parameters), while
    the paper's *pre-act ResNet-110* (1.7M, Table 3) uses basic blocks and needs
    ``block="basic"``; ``depth=110`` alone gives a 1.1M-parameter bottleneck net.

    ``zero_init_residual`` zeroes the last convolution of each branch (pre-activation branches
    end in a convolution, not a BatchNorm), so every block starts as the identity.
    """
    if block is not None:
        block = check_choice("resnet_v2", "block", block, ["basic", "bottleneck"])
    n_basic, n_bottleneck = basic_blocks(depth), bottleneck_blocks(depth)
    if block is None:
        if n_basic is None and n_bottleneck is None:
            raise invalid(
                "resnet_v2.depth",
                depth,
                f"{BOTTLENECK_DEPTHS} for bottleneck blocks or {BASIC_RULE} for basic blocks",
            )
        block = "bottleneck" if n_bottleneck is not None else "basic"
    n = n_bottleneck if block == "bottleneck" else n_basic
    if n is None:
        allowed = BOTTLENECK_DEPTHS if block == "bottleneck" else BASIC_DEPTHS
        raise invalid("resnet_v2.depth", depth, f"{allowed} with block={block!r}")
    if too_deep(depth):
        raise invalid("resnet_v2.depth", depth, MAX_DEPTH_RULE)
    width = check_positive_int("resnet_v2", "width", width)
    num_classes = check_positive_int("resnet_v2", "num_classes", num_classes)
    zero_init_residual = check_bool("resnet_v2", "zero_init_residual", zero_init_residual)
    block_cls = PreActBottleneck if block == "bottleneck" else PreActBasicBlock
    return CifarResNet(
        block_cls,
        n,
        expansion=block_cls.expansion,
        width=width,
        num_classes=num_classes,
        preact=True,
        zero_init_residual=zero_init_residual,
    )
