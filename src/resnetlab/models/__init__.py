"""The model zoo: every network comes from one registry, built by name with its arguments.

A variant in ``params.yaml`` names a model and its arguments and nothing else::

    model = build_model("resnet_v1", depth=56, shortcut="A")

Every model requires ``num_classes`` (keyword-only, no default: no model assumes CIFAR-10's 10
classes); training and loading a model file set it from the data's classes
(``build_model_for``), never from the variant. Inputs are RGB (3 channels) and square
(``data.image_size``). The CIFAR nets and the CIFAR-adapted ``resnet18/34/50`` are fully
convolutional with global average pooling: designed for 32x32 (CIFAR) images, they take any
input of at least their total stride, 4 for the CIFAR nets and 8 for the adapted ResNets
(smaller ones run too, but their last stages see mostly padding). ``resnet50_imagenet``
resizes any input to its ``input_size`` (at least 32, the total stride of ImageNet's ResNet-50).
CIFAR nets (``plain``, ``resnet_v1``, ``resnet_v2``) take ``depth`` (required) and an integer
``width`` multiplier of their 16/32/64 filters; ``resnet18/34/50`` take a ``width`` multiplier
(int or float) of their 64/128/256/512 filters; all but ``resnet50_imagenet`` and ``plain18``
take ``zero_init_residual``. ``plain18`` is ``resnet18`` without its shortcuts. Convolutions
use He (kaiming normal) initialisation. Unknown names, unknown arguments and invalid values
raise :class:`resnetlab.core.errors.ConfigError` saying what is allowed.

Variants, with ``width=1`` and parameters counted for 10 classes, as on CIFAR-10
(``tests/test_models.py`` keeps this table true):

| model             | arguments              | depth | blocks per stage       | parameters |
|-------------------|------------------------|-------|------------------------|------------|
| plain             | depth=20               |    20 | plain 3-3-3            |    269,722 |
| plain             | depth=32               |    32 | plain 5-5-5            |    464,154 |
| plain             | depth=44               |    44 | plain 7-7-7            |    658,586 |
| plain             | depth=56               |    56 | plain 9-9-9            |    853,018 |
| plain             | depth=110              |   110 | plain 18-18-18         |  1,727,962 |
| resnet_v1         | depth=20               |    20 | basic 3-3-3            |    269,722 |
| resnet_v1         | depth=32               |    32 | basic 5-5-5            |    464,154 |
| resnet_v1         | depth=44               |    44 | basic 7-7-7            |    658,586 |
| resnet_v1         | depth=56               |    56 | basic 9-9-9            |    853,018 |
| resnet_v1         | depth=110              |   110 | basic 18-18-18         |  1,727,962 |
| resnet_v1         | depth=1202             |  1202 | basic 200-200-200      | 19,421,274 |
| resnet_v1         | depth=20, shortcut=B   |    20 | basic 3-3-3            |    272,474 |
| resnet_v1         | depth=32, shortcut=B   |    32 | basic 5-5-5            |    466,906 |
| resnet_v1         | depth=44, shortcut=B   |    44 | basic 7-7-7            |    661,338 |
| resnet_v1         | depth=56, shortcut=B   |    56 | basic 9-9-9            |    855,770 |
| resnet_v1         | depth=110, shortcut=B  |   110 | basic 18-18-18         |  1,730,714 |
| resnet_v1         | depth=1202, shortcut=B |  1202 | basic 200-200-200      | 19,424,026 |
| resnet_v2         | depth=20, block=basic  |    20 | basic 3-3-3            |    272,282 |
| resnet_v2         | depth=32               |    32 | basic 5-5-5            |    466,714 |
| resnet_v2         | depth=44               |    44 | basic 7-7-7            |    661,146 |
| resnet_v2         | depth=56, block=basic  |    56 | basic 9-9-9            |    855,578 |
| resnet_v2         | depth=110, block=basic |   110 | basic 18-18-18         |  1,730,522 |
| resnet_v2         | depth=20               |    20 | bottleneck 2-2-2       |    219,482 |
| resnet_v2         | depth=56               |    56 | bottleneck 6-6-6       |    590,426 |
| resnet_v2         | depth=110              |   110 | bottleneck 12-12-12    |  1,146,842 |
| resnet_v2         | depth=164              |   164 | bottleneck 18-18-18    |  1,703,258 |
| resnet_v2         | depth=1001             |  1001 | bottleneck 111-111-111 | 10,327,706 |
| resnet18          | (defaults)             |    18 | basic 2-2-2-2          | 11,173,962 |
| plain18           | (defaults)             |    18 | plain 2-2-2-2          | 11,000,138 |
| resnet34          | (defaults)             |    34 | basic 3-4-6-3          | 21,282,122 |
| resnet50          | (defaults)             |    50 | bottleneck 3-4-6-3     | 23,520,842 |
| resnet50_imagenet | (defaults)             |    50 | bottleneck 3-4-6-3     | 23,528,522 |

Notes on the table:

- Published counts, which the exact counts round to: ``resnet_v1`` with option A 0.27M, 0.46M,
  0.66M, 0.85M, 1.7M, 19.4M (He et al. 2015, Table 6); pre-act ResNet-164 and pre-act
  ResNet-110 (``block=basic``) 1.7M each (He et al. 2016); CIFAR ResNet-18 about 11.2M. The
  10.2M published for ResNet-1001 matches this net's count without its 149,216 BatchNorm
  parameters (10,178,490); with them it is 10.33M.
- ``plain`` has exactly the parameters of ``resnet_v1`` with option A, whose shortcuts are
  parameter-free; option B adds a 1x1 projection + BN at the two stage transitions.
  ``plain18`` lacks ``resnet18``'s three projection shortcuts (1x1 conv + BN: 173,824
  parameters).
- ``resnet_v2`` without ``block`` uses bottleneck blocks when the depth is 9n+2 and basic blocks
  for other 6n+2 depths. Every 18k+2 depth is both, so ``depth=164`` is the paper's ResNet-164,
  but ``depth=20`` and ``depth=110`` are bottleneck nets too; the paper's pre-act ResNet-110
  (1.7M) has basic blocks and needs ``block=basic``.
- ``resnet50_imagenet`` is torchvision's ResNet-50 (7x7 stride-2 stem, max-pool) with a new
  head, one output per class; it resizes the input (any size) to ``input_size`` (default 224)
  inside the model.
- With another number of classes only the classifier changes: ``features + 1`` parameters per
  class (``features`` being the channels the global average pooling outputs).
"""

# Importing the builder modules registers their models.
from resnetlab.models import cifar, imagenet_resnets  # noqa: F401
from resnetlab.models.registry import (
    build_model,
    build_model_for,
    count_parameters,
    list_models,
    model_depth,
    register_model,
)

__all__ = [
    "build_model",
    "build_model_for",
    "count_parameters",
    "list_models",
    "model_depth",
    "register_model",
]
