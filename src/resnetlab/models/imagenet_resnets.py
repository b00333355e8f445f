"""ImageNet-family ResNets: CIFAR-adapted ``resnet18/34/50``, and ``resnet50_imagenet``.

The adapted nets reuse torchvision's ``BasicBlock`` and ``Bottleneck`` and change only the stem:
a 3x3 stride-1 convolution and no max-pool, so their total stride is 8 instead of 32 (He et al.
2015 use the 7x7 stride-2 stem + max-pool for 224x224 inputs). Designed for CIFAR's 32x32
images, on which the four stages work on 32/16/8/4 maps instead of shrinking the image to 1x1,
they are fully convolutional up to the global average pooling and so take any input size (the
project's inputs are square, ``data.image_size``): the last stage works on maps an eighth of
the input's side, so an input should be at least 8x8; smaller ones still run, but their last
stages see mostly padding.
``resnet50_imagenet`` is torchvision's unmodified ResNet-50 for transfer learning: the input,
whatever its size, is resized inside the model to ``input_size``, by default the 224x224 its
ImageNet weights expect. Every builder requires ``num_classes``, the size of the new head.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.core.errors import ResnetlabError, invalid
from resnetlab.models.cifar import he_init
from resnetlab.models.registry import check_bool, check_positive_int, register_model

if TYPE_CHECKING:
    from torchvision.models import ResNet, ResNet50_Weights
    from torchvision.models.resnet import BasicBlock, Bottleneck

# torchvision is imported only when one of these models is built or its weights are asked for:
# importing it takes ~2 s (it pulls in torch._dynamo), and every stage imports this registry.

__all__ = [
    "IMAGENET_WEIGHTS",  # noqa: F822 - resolved on use by the module's __getattr__
    "CifarAdaptedResNet",
    "ImageNetTransferResNet50",
    "PlainBasicBlock",
    "imagenet_weights_path",
    "plain18",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet50_imagenet",
]


def _imagenet_weights() -> ResNet50_Weights:
    from torchvision.models import ResNet50_Weights

    # Pinned rather than ResNet50_Weights.DEFAULT so an upgrade of torchvision cannot silently
    # change the starting point of the transfer experiment. V1 is the original release (76.1%).
    return ResNet50_Weights.IMAGENET1K_V1


def __getattr__(name: str) -> Any:
    # `IMAGENET_WEIGHTS`, the pinned weights enum member, resolved (importing torchvision) on use.
    if name == "IMAGENET_WEIGHTS":
        return _imagenet_weights()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_STAGE_FILTERS = (64, 128, 256, 512)


class PlainBasicBlock(nn.Module):
    """torchvision's basic block without its shortcut: conv3x3-BN-ReLU-conv3x3-BN-ReLU (the
    plain counterpart of He et al. 2015, Fig. 3 middle), with torchvision's module names and
    arguments. Takes no ``downsample``: with no shortcut there is nothing to project. Written
    out rather than subclassed from torchvision, which this module imports only on use."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        if downsample is not None:
            raise ValueError("PlainBasicBlock has no shortcut to down-sample")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


class CifarAdaptedResNet(nn.Module):
    """torchvision's ResNet layout with a 3x3 stride-1 stem and no max-pool: total stride 8,
    any input size (see the module docstring), ``num_classes`` outputs.

    Module names follow torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``).
    Down-sampling shortcuts are 1x1 projections + BN (option B), as in torchvision; a
    :class:`PlainBasicBlock` net has no shortcuts, hence no projections.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck | PlainBasicBlock],
        layers: list[int],
        stage_filters: tuple[int, ...],
        *,
        num_classes: int,
        zero_init_residual: bool = False,
    ) -> None:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        super().__init__()
        self.conv1 = nn.Conv2d(3, stage_filters[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_filters[0])
        self.relu = nn.ReLU(inplace=True)
        in_channels = stage_filters[0]
        stages = []
        for index, (planes, count) in enumerate(zip(stage_filters, layers, strict=True)):
            stride = 1 if index == 0 else 2
            out_channels = planes * block.expansion
            downsample = None
            if block is not PlainBasicBlock and (stride != 1 or in_channels != out_channels):
                downsample = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )
            blocks = [block(in_channels, planes, stride, downsample)]
            blocks += [block(out_channels, planes) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

        he_init(self)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def _stage_filters(model: str, width: object) -> tuple[int, ...]:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise invalid(f"{model}.width", width, "a number >= 1/64")
    filters = tuple(round(f * width) for f in _STAGE_FILTERS)
    if filters[0] < 1:
        raise invalid(
            f"{model}.width",
            width,
            "a number >= 1/64 (the first stage has round(64 * width) channels, at least 1)",
        )
    return filters


def _adapted(
    model: str,
    block: str | type[PlainBasicBlock],  # a torchvision block's name, or the plain block
    layers: list[int],
    num_classes: int,
    width: float,
    zero_init_residual: bool,
) -> CifarAdaptedResNet:
    import torchvision.models.resnet

    return CifarAdaptedResNet(
        getattr(torchvision.models.resnet, block) if isinstance(block, str) else block,
        layers,
        _stage_filters(model, width),
        num_classes=check_positive_int(model, "num_classes", num_classes),
        zero_init_residual=check_bool(model, "zero_init_residual", zero_init_residual),
    )


@register_model("resnet18", depth=18)
def resnet18(
    *, num_classes: int, width: float = 1, zero_init_residual: bool = False
) -> CifarAdaptedResNet:
    """CIFAR-adapted ResNet-18 (any input size, designed for 32x32): basic blocks 2-2-2-2 on
    64/128/256/512 x ``width`` filters."""
    return _adapted("resnet18", "BasicBlock", [2, 2, 2, 2], num_classes, width, zero_init_residual)


@register_model("plain18", depth=18)
def plain18(*, num_classes: int, width: float = 1) -> CifarAdaptedResNet:
    """CIFAR-adapted ResNet-18 without its shortcuts (and so without the three 1x1
    projections): the plain net to set against ``resnet18`` like for like."""
    return _adapted("plain18", PlainBasicBlock, [2, 2, 2, 2], num_classes, width, False)


@register_model("resnet34", depth=34)
def resnet34(
    *, num_classes: int, width: float = 1, zero_init_residual: bool = False
) -> CifarAdaptedResNet:
    """CIFAR-adapted ResNet-34 (any input size, designed for 32x32): basic blocks 3-4-6-3."""
    return _adapted("resnet34", "BasicBlock", [3, 4, 6, 3], num_classes, width, zero_init_residual)


@register_model("resnet50", depth=50)
def resnet50(
    *, num_classes: int, width: float = 1, zero_init_residual: bool = False
) -> CifarAdaptedResNet:
    """CIFAR-adapted ResNet-50 (any input size, designed for 32x32): bottleneck blocks 3-4-6-3,
    stages output 4x the filters."""
    return _adapted("resnet50", "Bottleneck", [3, 4, 6, 3], num_classes, width, zero_init_residual)


# --- transfer learning from ImageNet -----------------------------------------------------------


def imagenet_weights_path() -> str:
    """Where torchvision looks for the pinned weights: ``<torch hub dir>/checkpoints/<file>``.

    The hub dir is ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``) or whatever
    ``torch.hub.set_dir`` set.
    """
    filename = os.path.basename(urlparse(_imagenet_weights().url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _load_pretrained_resnet50() -> ResNet:
    from torchvision.models import resnet50 as tv_resnet50

    weights = _imagenet_weights()
    path = imagenet_weights_path()
    try:
        # Goes through torchvision's weights API: reads the cached file, or downloads it once
        # into the hub folder (hash-checked against the file name).
        return tv_resnet50(weights=weights, progress=True)
    except OSError as err:  # URLError, DNS failures and timeouts are all OSErrors
        if os.path.exists(path):
            raise ResnetlabError(
                f"resnet50_imagenet: could not read the cached ImageNet weights {path}: {err}"
            ) from err
        folder, filename = os.path.split(path)
        raise ResnetlabError(
            f"resnet50_imagenet: pretrained=true needs the ImageNet weights file {filename}, "
            f"which is not in {folder} and could not be downloaded ({err}). On a machine with "
            f"internet, download {weights.url} and copy it to {path} (the folder "
            "follows $TORCH_HOME/hub/checkpoints), or set pretrained: false."
        ) from err


class ImageNetTransferResNet50(nn.Module):
    """torchvision's ResNet-50 with a new ``num_classes`` head, fed images resized to its size.

    The input, whatever its size, is bilinearly resized to ``input_size`` inside the model, so
    the data pipeline stays the same for every variant. With ``freeze_backbone`` only the head is
    trainable and the backbone's BatchNorm layers stay in eval mode even in ``train()``: a
    frozen feature extractor should also keep its (ImageNet) running statistics.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        pretrained: bool = False,
        freeze_backbone: bool = False,
        input_size: int = 224,
    ) -> None:
        from torchvision.models import resnet50 as tv_resnet50

        super().__init__()
        self.input_size = input_size
        self.freeze_backbone = freeze_backbone
        # Without weights torchvision applies the same He (fan_out) initialisation as he_init.
        self.resnet = _load_pretrained_resnet50() if pretrained else tv_resnet50(weights=None)
        self.resnet.fc = nn.Linear(self.resnet.fc.in_features, num_classes)
        if freeze_backbone:
            for name, param in self.resnet.named_parameters():
                param.requires_grad = name.startswith("fc.")
            self.train(self.training)

    def train(self, mode: bool = True) -> ImageNetTransferResNet50:
        super().train(mode)
        if self.freeze_backbone:
            for module in self.resnet.modules():
                # _BatchNorm: BatchNorm2d, and the SyncBatchNorm that DDP on CUDA converts it to.
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return self.resnet(x)


@register_model("resnet50_imagenet", depth=50)
def resnet50_imagenet(
    *,
    num_classes: int,
    pretrained: bool = False,
    freeze_backbone: bool = False,
    input_size: int = 224,
) -> ImageNetTransferResNet50:
    """torchvision's ResNet-50 for transfer learning (see :class:`ImageNetTransferResNet50`).

    ``pretrained=True`` loads :data:`IMAGENET_WEIGHTS` through torchvision's weights API (cached
    in the torch hub folder); offline and uncached, it raises :class:`ResnetlabError` naming the
    file and the folder to put it in. ``input_size`` (what any input is resized to) must be at
    least 32, the total stride of ImageNet's ResNet-50.
    """
    name = "resnet50_imagenet"
    return ImageNetTransferResNet50(
        num_classes=check_positive_int(name, "num_classes", num_classes),
        pretrained=check_bool(name, "pretrained", pretrained),
        freeze_backbone=check_bool(name, "freeze_backbone", freeze_backbone),
        input_size=check_positive_int(name, "input_size", input_size, minimum=32),
    )
