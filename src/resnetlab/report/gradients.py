"""Diagnostics of a network at initialisation.

The classic argument says deep plain nets fail because their gradients *vanish*. He et al. (2015)
argue otherwise: with BatchNorm the gradients keep healthy norms and the trouble is
optimisation. :func:`gradient_norms` measures it: one forward/backward pass on a batch, the
gradient norm of every convolution and linear weight from input to output. Measured with He
initialisation and BatchNorm (see ``tests/test_diagnostics.py``), the first convolution's
gradient in a plain net does not vanish with depth, it *grows* by orders of magnitude, while
the residual twin's stays within a small factor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.data.datasets import CHANNELS, CIFAR10
from resnetlab.models import build_model

__all__ = ["first_layer_grad_norm", "gradient_norms", "gradient_profiles"]

# The profile contrasts plain and residual nets of He et al.'s CIFAR depths.
GRADIENT_MODELS = ("plain", "resnet_v1")
GRADIENT_BATCH = 32  # images in the one random batch the gradients are taken on
# The experiment is He et al.'s argument about CIFAR-10's nets, whatever data.dataset trains:
# a random batch shaped like CIFAR-10's images and labels.
GRADIENT_DATA = CIFAR10

LossFn = Callable[[Tensor, Tensor], Tensor]

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def gradient_norms(
    model: nn.Module,
    batch: tuple[Tensor, Tensor] | Tensor,
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, float]:
    """L2 norm of the loss gradient for every conv/linear weight, ordered from input to output.

    One forward/backward pass of ``loss_fn`` (cross-entropy by default) on ``batch`` = ``(inputs,
    targets)``; with a bare input tensor the targets are drawn uniformly from the model's
    classes with the global RNG, so seed ``torch`` first to make the result repeatable. The model
    runs in train mode, so BatchNorm uses batch statistics as it does at the first step of
    training.

    The model is left as it was found: its train/eval mode, its buffers (BatchNorm running
    statistics are restored) and its ``.grad`` fields (gradients are taken with
    ``torch.autograd.grad`` and never accumulated into ``.grad``). Keys are parameter names
    such as ``"conv1.weight"``; the order is the order in which the layers first ran, so a
    projection shortcut comes where it is executed. Frozen and unused weights are left out.
    """
    if isinstance(batch, Tensor):
        inputs, targets = batch, None
    else:
        inputs, targets = batch
    first_param = next(model.parameters(), None)
    device = first_param.device if first_param is not None else inputs.device

    layers = {
        module: name
        for name, module in model.named_modules()
        if isinstance(module, _WEIGHTED) and module.weight.requires_grad
    }
    run_order: list[nn.Module] = []

    def record(module: nn.Module, _args: object) -> None:
        if module not in run_order:
            run_order.append(module)

    hooks = [module.register_forward_pre_hook(record) for module in layers]
    modes = {module: module.training for module in model.modules()}
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        model.train()
        outputs = model(inputs.to(device))
        if targets is None:
            targets = torch.randint(outputs.shape[1], (outputs.shape[0],))
        loss = loss_fn(outputs, targets.to(outputs.device))
        weights = [module.weight for module in run_order]
        grads = torch.autograd.grad(loss, weights, allow_unused=True) if weights else ()
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)

    return {
        f"{layers[module]}.weight" if layers[module] else "weight": grad.norm().item()
        for module, grad in zip(run_order, grads, strict=True)
        if grad is not None
    }


def first_layer_grad_norm(
    model: nn.Module,
    batch: tuple[Tensor, Tensor] | Tensor,
    loss_fn: LossFn = F.cross_entropy,
) -> float:
    """Gradient norm of the first weight layer the input meets (see :func:`gradient_norms`)."""
    norms = gradient_norms(model, batch, loss_fn)
    if not norms:
        raise ValueError("the model has no trainable convolution or linear weight")
    return next(iter(norms.values()))


def gradient_profiles(
    depths: Sequence[int], models: Sequence[str] = GRADIENT_MODELS, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per-layer gradient norms (input -> output) of freshly initialised ``models`` at ``depths``,
    on one seeded random batch of CIFAR-shaped images; keys like ``"plain-20"``."""
    torch.manual_seed(seed)
    side, classes = GRADIENT_DATA.image_size, GRADIENT_DATA.num_classes
    x = torch.randn(GRADIENT_BATCH, CHANNELS, side, side)
    y = torch.randint(0, classes, (GRADIENT_BATCH,))
    profiles = {}
    for depth in depths:
        for name in models:
            # Reseeded per model so each net's initial weights do not depend on the loop order.
            torch.manual_seed(seed)
            model = build_model(name, depth=depth, num_classes=classes)
            profiles[f"{name}-{depth}"] = gradient_norms(model, (x, y))
    return profiles
