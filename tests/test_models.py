"""Model zoo: registry, golden parameter counts, the docstring table, shapes and options."""

from __future__ import annotations

import inspect
import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck

import resnetlab.models as models
from resnetlab.core.errors import ConfigError, ResnetlabError
from resnetlab.models import build_model, count_parameters, list_models, model_depth, register_model
from resnetlab.models import registry as registry_module
from resnetlab.models.cifar import BasicBlockV1, PreActBasicBlock, PreActBottleneck, ZeroPadShortcut
from resnetlab.models.imagenet_resnets import (
    IMAGENET_WEIGHTS,
    PlainBasicBlock,
    imagenet_weights_path,
)

MODEL_NAMES = [
    "plain",
    "plain18",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet50_imagenet",
    "resnet_v1",
    "resnet_v2",
]

# Exact parameter counts (num_classes=10, width=1), keyed by (model, arguments as in the table).
GOLDEN = {
    ("plain", "depth=20"): 269_722,
    ("plain", "depth=32"): 464_154,
    ("plain", "depth=44"): 658_586,
    ("plain", "depth=56"): 853_018,
    ("plain", "depth=110"): 1_727_962,
    ("resnet_v1", "depth=20"): 269_722,
    ("resnet_v1", "depth=32"): 464_154,
    ("resnet_v1", "depth=44"): 658_586,
    ("resnet_v1", "depth=56"): 853_018,
    ("resnet_v1", "depth=110"): 1_727_962,
    ("resnet_v1", "depth=1202"): 19_421_274,
    ("resnet_v1", "depth=20, shortcut=B"): 272_474,
    ("resnet_v1", "depth=32, shortcut=B"): 466_906,
    ("resnet_v1", "depth=44, shortcut=B"): 661_338,
    ("resnet_v1", "depth=56, shortcut=B"): 855_770,
    ("resnet_v1", "depth=110, shortcut=B"): 1_730_714,
    ("resnet_v1", "depth=1202, shortcut=B"): 19_424_026,
    ("resnet_v2", "depth=20, block=basic"): 272_282,
    ("resnet_v2", "depth=32"): 466_714,
    ("resnet_v2", "depth=44"): 661_146,
    ("resnet_v2", "depth=56, block=basic"): 855_578,
    ("resnet_v2", "depth=110, block=basic"): 1_730_522,
    ("resnet_v2", "depth=20"): 219_482,
    ("resnet_v2", "depth=56"): 590_426,
    ("resnet_v2", "depth=110"): 1_146_842,
    ("resnet_v2", "depth=164"): 1_703_258,
    ("resnet_v2", "depth=1001"): 10_327_706,
    ("resnet18", "(defaults)"): 11_173_962,
    # resnet18 less its three projection shortcuts (1x1 conv + BN): 11,173,962 - 173,824.
    ("plain18", "(defaults)"): 11_000_138,
    ("resnet34", "(defaults)"): 21_282_122,
    ("resnet50", "(defaults)"): 23_520_842,
    ("resnet50_imagenet", "(defaults)"): 23_528_522,
}

# He et al. 2015, Table 6 (shortcut option A), in millions, rounded as published.
PAPER_V1 = {20: "0.27", 32: "0.46", 44: "0.66", 56: "0.85", 110: "1.7", 1202: "19.4"}

IMAGENET_FILE = "resnet50-0676ba61.pth"  # torchvision's ResNet50_Weights.IMAGENET1K_V1


def parse_arguments(text: str) -> dict[str, object]:
    if text == "(defaults)":
        return {}
    kwargs: dict[str, object] = {}
    for item in text.split(", "):
        key, value = item.split("=")
        kwargs[key] = int(value) if value.isdigit() else value
    return kwargs


def docstring_table() -> dict[tuple[str, str], dict[str, str]]:
    """Rows of the variant table in ``resnetlab.models.__doc__``, keyed like GOLDEN."""
    rows = {}
    for line in models.__doc__.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] not in MODEL_NAMES:
            continue
        name, arguments, depth, blocks, parameters = cells
        assert (name, arguments) not in rows, f"duplicate row {name} {arguments}"
        rows[(name, arguments)] = {"depth": depth, "blocks": blocks, "parameters": parameters}
    return rows


def build_meta(name: str, **kwargs: object) -> nn.Module:
    # Meta tensors have shapes but no storage: counting 19M parameters costs no memory or init.
    # The golden counts and the table are for 10 classes (CIFAR-10's) unless kwargs say others.
    with torch.device("meta"):
        return build_model(name, **{"num_classes": 10, **kwargs})


def stages(model: nn.Module) -> list[nn.Sequential]:
    return [m for n, m in model.named_modules() if re.fullmatch(r"(.*\.)?layer\d", n)]


def block_kind(block: nn.Module) -> str:
    if isinstance(block, (Bottleneck, PreActBottleneck)):
        return "bottleneck"
    if isinstance(block, BasicBlockV1) and block.shortcut is None:
        return "plain"
    if isinstance(block, PlainBasicBlock):
        return "plain"
    assert isinstance(block, (BasicBlockV1, PreActBasicBlock, BasicBlock))
    return "basic"


# --- registry -------------------------------------------------------------------------------


def test_list_models_is_sorted_and_complete() -> None:
    assert list_models() == MODEL_NAMES


def test_every_registered_model_has_golden_counts() -> None:
    assert {name for name, _ in GOLDEN} == set(list_models())


def test_unknown_model_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet_v3", depth=20)
    message = str(info.value)
    assert message.startswith("model: 'resnet_v3' is not allowed; expected one of ")
    for name in MODEL_NAMES:
        assert name in message


def test_registering_a_name_twice_fails() -> None:
    def builder(num_classes: int = 10) -> nn.Module:
        return nn.Linear(3, num_classes)

    with pytest.raises(ConfigError, match="already registered"):
        register_model("resnet18", depth=18)(builder)

    name = "test_only_linear"
    try:
        register_model(name, depth=1)(builder)
        assert name in list_models()
        assert isinstance(build_model(name, num_classes=3), nn.Linear)
        with pytest.raises(ConfigError, match="already registered"):
            register_model(name, depth=1)(builder)
    finally:
        registry_module._REGISTRY.pop(name, None)
    assert name not in list_models()


BASIC = "a depth of the form 6n+2 (8, 14, 20, 32, 44, 56, 110, 1202, ...)"
BOTTLENECK = "a depth of the form 9n+2 (11, 20, 29, 56, 110, 164, 1001, ...)"


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("resnet_v1", {"depth": 21}, f"resnet_v1.depth: 21 is not allowed; expected {BASIC}"),
        ("resnet_v1", {"depth": 9}, f"resnet_v1.depth: 9 is not allowed; expected {BASIC}"),
        (
            "plain",
            {"depth": 1202 + 6 * 1000 + 1},
            f"plain.depth: 7203 is not allowed; expected {BASIC}",
        ),
        ("resnet_v1", {"depth": 2}, f"resnet_v1.depth: 2 is not allowed; expected {BASIC}"),
        ("resnet_v1", {"depth": "56"}, f"resnet_v1.depth: '56' is not allowed; expected {BASIC}"),
        ("resnet_v1", {"depth": True}, f"resnet_v1.depth: True is not allowed; expected {BASIC}"),
        (
            "resnet_v1",
            {"depth": 20, "shortcut": "C"},
            "resnet_v1.shortcut: 'C' is not allowed; expected one of 'A', 'B'",
        ),
        (
            "resnet_v1",
            {"depth": 20, "width": 0},
            "resnet_v1.width: 0 is not allowed; expected an integer >= 1",
        ),
        (
            "resnet_v1",
            {"depth": 20, "width": 1.5},
            "resnet_v1.width: 1.5 is not allowed; expected an integer >= 1",
        ),
        (
            "resnet_v1",
            {"depth": 20, "num_classes": 0},
            "resnet_v1.num_classes: 0 is not allowed; expected an integer >= 1",
        ),
        (
            "resnet_v1",
            {"depth": 20, "zero_init_residual": "yes"},
            "resnet_v1.zero_init_residual: 'yes' is not allowed; expected true or false",
        ),
        (
            "resnet_v2",
            {"depth": 21},
            "resnet_v2.depth: 21 is not allowed; expected a depth of the form "
            "9n+2 (11, 20, 29, 56, 110, 164, 1001, ...) for bottleneck blocks or "
            "6n+2 (8, 14, 20, 32, 44, 56, 110, 1202, ...) for basic blocks",
        ),
        (
            "resnet_v2",
            {"depth": 164, "block": "wide"},
            "resnet_v2.block: 'wide' is not allowed; expected one of 'basic', 'bottleneck'",
        ),
        (
            "resnet_v2",
            {"depth": 32, "block": "bottleneck"},
            f"resnet_v2.depth: 32 is not allowed; expected {BOTTLENECK} with block='bottleneck'",
        ),
        (
            "resnet_v2",
            {"depth": 29, "block": "basic"},
            f"resnet_v2.depth: 29 is not allowed; expected {BASIC} with block='basic'",
        ),
        (
            "plain",
            {"depth": 20, "zero_init_residual": True},
            "plain.zero_init_residual: True is not allowed; expected false (a plain net has no",
        ),
        ("resnet18", {"width": 0.001}, "resnet18.width: 0.001 is not allowed; expected a number"),
        ("resnet18", {"width": -1}, "resnet18.width: -1 is not allowed; expected a number >= 1/64"),
        ("resnet34", {"width": "1"}, "resnet34.width: '1' is not allowed; expected a number"),
        (
            "resnet50_imagenet",
            {"input_size": 16},
            "resnet50_imagenet.input_size: 16 is not allowed; expected an integer >= 32",
        ),
        (
            "resnet50_imagenet",
            {"pretrained": "yes"},
            "resnet50_imagenet.pretrained: 'yes' is not allowed; expected true or false",
        ),
    ],
)
def test_invalid_values_say_what_is_allowed(
    name: str, kwargs: dict[str, object], message: str
) -> None:
    # One shape for every invalid value, as in resnetlab.core.config: "<key>: <value> is not
    # allowed; expected <what is>", the key of a model argument being "<model>.<argument>".
    with pytest.raises(ConfigError) as info:
        build_meta(name, **kwargs)
    assert str(info.value).startswith(message)


def test_unknown_argument_lists_the_accepted_ones() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet18", depht=18)
    message = str(info.value)
    assert message.startswith("resnet18.depht: unknown argument; accepted: ")
    for accepted in ("num_classes (required)", "width=1", "zero_init_residual=False"):
        assert accepted in message
    # plain has no shortcut to choose.
    with pytest.raises(ConfigError, match=r"^plain\.shortcut: unknown argument; accepted: "):
        build_model("plain", depth=20, shortcut="A")
    with pytest.raises(ConfigError, match=r"^plain\.bar, plain\.foo: unknown arguments; "):
        build_model("plain", depth=20, foo=1, bar=2)


def test_missing_depth_is_reported() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^resnet_v1\.depth: missing required argument; accepted: depth \(required\)",
    ):
        build_model("resnet_v1")


@pytest.mark.parametrize(("name", "kwargs"), [("resnet_v1", {"depth": 20}), ("resnet18", {})])
def test_missing_num_classes_is_reported(name: str, kwargs: dict[str, object]) -> None:
    # No model assumes CIFAR-10's 10 classes: the number comes from the data, always.
    with pytest.raises(
        ConfigError,
        match=rf"^{name}\.num_classes: missing required argument; it is the data's number of ",
    ):
        build_model(name, **kwargs)


def test_every_builder_requires_num_classes_by_keyword() -> None:
    for name in list_models():
        param = inspect.signature(registry_module._REGISTRY[name].builder).parameters["num_classes"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY, name
        assert param.default is inspect.Parameter.empty, name


def test_model_depth() -> None:
    assert model_depth("resnet_v1", {"depth": 56, "shortcut": "B"}) == 56
    assert model_depth("resnet_v2", {"depth": 164}) == 164
    assert model_depth("resnet18", {}) == 18
    assert model_depth("resnet34", {"width": 0.5}) == 34
    assert model_depth("resnet50", {}) == 50
    assert model_depth("resnet50_imagenet", {"pretrained": True}) == 50
    with pytest.raises(ConfigError, match=r"^plain\.depth: missing required argument"):
        model_depth("plain", {})
    with pytest.raises(
        ConfigError, match=r"^model: 'vgg16' is not allowed; expected one of plain, "
    ):
        model_depth("vgg16", {})


# --- golden counts and the docstring table ----------------------------------------------------


@pytest.mark.parametrize(("name", "arguments"), list(GOLDEN))
def test_golden_counts_and_docstring_row(name: str, arguments: str) -> None:
    kwargs = parse_arguments(arguments)
    model = build_meta(name, **kwargs)
    assert count_parameters(model) == GOLDEN[(name, arguments)]

    row = docstring_table()[(name, arguments)]
    assert int(row["parameters"].replace(",", "")) == GOLDEN[(name, arguments)]
    assert int(row["depth"]) == model_depth(name, kwargs)
    kind, per_stage = row["blocks"].split()
    assert [len(stage) for stage in stages(model)] == [int(n) for n in per_stage.split("-")]
    assert {block_kind(block) for stage in stages(model) for block in stage} == {kind}


def test_docstring_table_has_exactly_the_golden_rows() -> None:
    assert set(docstring_table()) == set(GOLDEN)


def test_weighted_layer_count_is_the_nominal_depth() -> None:
    # Depth counts the convolutions on the main path plus the classifier, not the shortcuts.
    for name, kwargs in [("plain", {"depth": 56}), ("resnet_v1", {"depth": 56})]:
        model = build_meta(name, **kwargs)
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(layers) == 56


def test_paper_parameter_counts() -> None:
    for depth, published in PAPER_V1.items():
        decimals = len(published.split(".")[1])
        count = GOLDEN[("resnet_v1", f"depth={depth}")]
        assert f"{count / 1e6:.{decimals}f}" == published, depth
    assert f"{GOLDEN[('resnet_v2', 'depth=164')] / 1e6:.1f}" == "1.7"
    assert f"{GOLDEN[('resnet_v2', 'depth=110, block=basic')] / 1e6:.1f}" == "1.7"
    assert f"{GOLDEN[('resnet18', '(defaults)')] / 1e6:.1f}" == "11.2"


def test_plain18_is_resnet18_without_shortcuts() -> None:
    plain, residual = build_meta("plain18"), build_meta("resnet18")
    assert count_parameters(residual) - count_parameters(plain) == sum(
        count_parameters(m) for n, m in residual.named_modules() if n.endswith("downsample")
    )
    assert not any(n.endswith("downsample") for n, _ in plain.named_modules())
    # Same layers otherwise: every conv of plain18 has its twin's shape.
    convs = [m.weight.shape for m in plain.modules() if isinstance(m, nn.Conv2d)]
    twins = [
        m.weight.shape
        for n, m in residual.named_modules()
        if isinstance(m, nn.Conv2d) and "downsample" not in n
    ]
    assert convs == twins


def test_plain_has_the_parameters_of_its_resnet_twin() -> None:
    for depth in (20, 32, 44, 56, 110):
        assert GOLDEN[("plain", f"depth={depth}")] == GOLDEN[("resnet_v1", f"depth={depth}")]
    # Also on real tensors, not only on the meta device.
    assert count_parameters(build_model("plain", depth=20, num_classes=10)) == count_parameters(
        build_model("resnet_v1", depth=20, shortcut="A", num_classes=10)
    )


# --- forward passes ---------------------------------------------------------------------------

# Tiny versions of every model, so the forward passes stay fast on a CPU.
TINY = [
    ("plain", {"depth": 8}),
    ("resnet_v1", {"depth": 8, "shortcut": "A"}),
    ("resnet_v1", {"depth": 8, "shortcut": "B", "width": 2}),
    ("resnet_v2", {"depth": 8, "block": "basic"}),
    ("resnet_v2", {"depth": 11}),
    ("resnet18", {"width": 1 / 16}),
    ("plain18", {"width": 1 / 16}),
    ("resnet34", {"width": 1 / 16}),
    ("resnet50", {"width": 1 / 16}),
    ("resnet50_imagenet", {"input_size": 32}),
]


def test_tiny_versions_cover_every_model() -> None:
    assert {name for name, _ in TINY} == set(list_models())


@pytest.mark.parametrize(("name", "kwargs"), TINY, ids=[f"{n}-{k}" for n, k in TINY])
def test_forward_shape(name: str, kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, **kwargs)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("side", [16, 64])
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("resnet_v1", {"depth": 20}), ("resnet18", {"width": 1 / 16})],
    ids=["resnet20", "resnet18"],
)
def test_fully_convolutional_nets_take_other_input_sizes(
    name: str, kwargs: dict[str, object], side: int
) -> None:
    # Designed for 32x32 (CIFAR), but global average pooling makes any size above the total
    # stride (4 for the CIFAR nets, 8 for the adapted ResNets) work: data.image_size is free.
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, **kwargs)
    out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet_v1", {"depth": 8, "shortcut": "A"}),
        ("resnet_v2", {"depth": 11}),
        ("resnet18", {"width": 1 / 16}),
        ("resnet50_imagenet", {"input_size": 48}),
    ],
)
def test_channels_last_matches_contiguous(name: str, kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    # Training works too: a backward pass in channels_last.
    model.train()
    model(x.to(memory_format=torch.channels_last)).sum().backward()


def _inductor_unavailable() -> str | None:
    """Why inductor cannot compile on this machine, or None if it can (probed on a tiny fn)."""
    try:
        probe = torch.compile(lambda t: torch.relu(t) + 1, backend="inductor")
        probe(torch.randn(4))
    except Exception as err:  # any failure of this probe is the environment's, not the model's
        return f"torch.compile(backend='inductor') does not work on this CPU: {err!r}"[:300]
    finally:
        torch._dynamo.reset()
    return None


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile(backend: str) -> None:
    # aot_eager traces the model like inductor (fullgraph: no graph breaks) but needs no C++
    # compiler; inductor is the real thing and is skipped where it cannot run.
    if backend == "inductor" and (reason := _inductor_unavailable()):
        pytest.skip(reason)
    torch.manual_seed(0)
    model = build_model("resnet_v1", depth=8, shortcut="A", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    try:
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    finally:
        torch._dynamo.reset()


# --- options ----------------------------------------------------------------------------------


def test_option_a_shortcut_is_parameter_free_and_option_b_projects() -> None:
    model_a = build_model("resnet_v1", depth=20, shortcut="A", num_classes=10)
    model_b = build_model("resnet_v1", depth=20, shortcut="B", num_classes=10)
    shortcuts_a = [block.shortcut for stage in stages(model_a) for block in stage]
    shortcuts_b = [block.shortcut for stage in stages(model_b) for block in stage]
    assert sum(isinstance(s, ZeroPadShortcut) for s in shortcuts_a) == 2
    assert all(count_parameters(s) == 0 for s in shortcuts_a)
    projections = [s for s in shortcuts_b if count_parameters(s) > 0]
    assert len(projections) == 2  # at the 16->32 and 32->64 transitions
    # A 1x1 conv (no bias) + BN: 16*32 + 2*32 and 32*64 + 2*64 parameters.
    assert [count_parameters(p) for p in projections] == [16 * 32 + 64, 32 * 64 + 128]
    assert count_parameters(model_b) - count_parameters(model_a) == 576 + 2176


def test_zero_pad_shortcut_subsamples_and_pads_with_zeros() -> None:
    x = torch.randn(2, 16, 32, 32)
    out = ZeroPadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 16, 16)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
    assert not out[:, 16:].any()


def _last_residual_weights(model: nn.Module) -> list[torch.Tensor]:
    weights = []
    for stage in stages(model):
        for block in stage:
            if isinstance(block, Bottleneck):
                weights.append(block.bn3.weight)
            elif isinstance(block, (BasicBlock, BasicBlockV1)):
                weights.append(block.bn2.weight)
            elif isinstance(block, PreActBottleneck):
                weights.append(block.conv3.weight)  # pre-activation branches end in a conv
            else:
                weights.append(block.conv2.weight)
    return weights


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet_v1", {"depth": 20}),
        ("resnet_v1", {"depth": 8, "shortcut": "B"}),
        ("resnet_v2", {"depth": 8, "block": "basic"}),
        ("resnet_v2", {"depth": 11}),
        ("resnet18", {"width": 1 / 16}),
        ("resnet50", {"width": 1 / 16}),
    ],
)
def test_zero_init_residual(name: str, kwargs: dict[str, object]) -> None:
    default = _last_residual_weights(build_model(name, num_classes=10, **kwargs))
    assert default and all(w.abs().sum() > 0 for w in default)
    zeroed = _last_residual_weights(
        build_model(name, num_classes=10, zero_init_residual=True, **kwargs)
    )
    assert len(zeroed) == len(default)
    assert all(not w.any() for w in zeroed)


def test_zero_init_makes_preact_blocks_the_identity() -> None:
    model = build_model(
        "resnet_v2", depth=20, block="bottleneck", zero_init_residual=True, num_classes=10
    )
    block = model.layer2[1]  # not a transition block: identity shortcut
    x = torch.randn(2, 128, 16, 16)
    torch.testing.assert_close(block(x), x)


def test_he_initialisation() -> None:
    torch.manual_seed(0)
    model = build_model("resnet_v1", depth=20, num_classes=10)
    conv = model.layer3[1].conv1  # 64 -> 64 channels, 3x3
    expected_std = (2 / (64 * 9)) ** 0.5  # kaiming normal, fan_out, ReLU gain
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    assert all(bn.weight.eq(1).all() for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))


# --- resnet50_imagenet ------------------------------------------------------------------------


@dataclass
class OfflineHub:
    path: Path  # the torch hub folder; torchvision reads weights from path / "checkpoints"
    attempts: list[str]  # URLs whose download was attempted


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OfflineHub:
    """An empty torch hub folder, and no network: any download attempt raises URLError."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so TORCH_HOME decides, as for users
    hub = OfflineHub(path=tmp_path / "torch" / "hub", attempts=[])

    def offline(request: object, *args: object, **kwargs: object) -> None:
        hub.attempts.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("network unreachable (test)")

    # torch.hub.download_url_to_file calls the urlopen it imported from urllib.request.
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    assert Path(torch.hub.get_dir()) == hub.path
    return hub


def test_weights_file_is_the_one_torchvision_expects(hub_dir: OfflineHub) -> None:
    assert os.path.basename(IMAGENET_WEIGHTS.url) == IMAGENET_FILE
    assert Path(imagenet_weights_path()) == hub_dir.path / "checkpoints" / IMAGENET_FILE


def test_pretrained_offline_error_names_file_and_folder(hub_dir: OfflineHub) -> None:
    with pytest.raises(ResnetlabError) as info:
        build_model("resnet50_imagenet", pretrained=True, num_classes=10)
    assert not isinstance(info.value, ConfigError)
    message = str(info.value)
    assert IMAGENET_FILE in message
    assert str(hub_dir.path / "checkpoints") in message
    assert hub_dir.attempts == [IMAGENET_WEIGHTS.url]  # the real download path was taken
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_pretrained_loads_cached_weights(hub_dir: OfflineHub) -> None:
    torch.manual_seed(0)
    state = tv_resnet50().state_dict()
    marker = torch.linspace(-1, 1, state["conv1.weight"].numel()).view_as(state["conv1.weight"])
    state["conv1.weight"] = marker
    (hub_dir.path / "checkpoints").mkdir(parents=True)
    torch.save(state, hub_dir.path / "checkpoints" / IMAGENET_FILE)

    model = build_model("resnet50_imagenet", pretrained=True, num_classes=10)
    assert hub_dir.attempts == []
    torch.testing.assert_close(model.resnet.conv1.weight.detach(), marker)
    torch.testing.assert_close(
        model.resnet.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"]
    )
    assert model.resnet.fc.out_features == 10


def test_freeze_backbone_trains_only_the_head() -> None:
    torch.manual_seed(0)
    model = build_model("resnet50_imagenet", freeze_backbone=True, input_size=32, num_classes=10)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"resnet.fc.weight", "resnet.fc.bias"}
    assert count_parameters(model) == GOLDEN[("resnet50_imagenet", "(defaults)")]

    model.train()
    assert model.training and model.resnet.fc.training
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(bn.training for bn in batchnorms)  # frozen stats, not just frozen weights
    before = batchnorms[0].running_mean.clone()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    torch.testing.assert_close(batchnorms[0].running_mean, before)
    assert model.resnet.conv1.weight.grad is None
    assert model.resnet.fc.weight.grad is not None


def test_freeze_backbone_keeps_sync_batchnorm_in_eval_mode_too() -> None:
    """DDP on CUDA converts the BatchNorm layers to SyncBatchNorm, which is not a BatchNorm2d:
    the frozen backbone's statistics must stay frozen there too (was: SyncBatchNorm layers in
    training mode, updating the ImageNet running statistics)."""
    model = build_model("resnet50_imagenet", freeze_backbone=True, input_size=32, num_classes=10)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.train()
    syncs = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(syncs) == 53 and not any(bn.training for bn in syncs)
    assert model.resnet.fc.training


def test_input_is_upsampled_to_input_size() -> None:
    model = build_model("resnet50_imagenet", input_size=64, num_classes=10).eval()
    seen: list[torch.Size] = []
    model.resnet.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert seen == [torch.Size([2, 3, 64, 64])]
    assert out.shape == (2, 10)
    assert build_model("resnet50_imagenet", num_classes=10).input_size == 224
