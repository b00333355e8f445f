"""The operators a logged model's program may call: exactly those the networks of the model
registry export to, each with the arguments, and the kinds of argument, that export writes.

An exported program (`models/model.json` in the pt2 archive) is a list of nodes, each naming
an operator and its arguments. ATen alone has operators that reach the file system
(`aten.from_file(filename, shared=True)` maps any file, readable and writable), so a program is
held to this table rather than to "ATen only": a node calling anything else, passing an argument
the table does not name, or passing it as another kind (a string, a device, a nested graph, an
operator...) is refused before torch reads the graph. No operator here takes a string.

`tests/test_pt2_allowlist.py` exports every model in the registry (each argument that changes
the graph: option A/B shortcuts, basic/bottleneck blocks, up-sampling or not) the way the train
stage logs it and asserts that together they call exactly this table: a new layer fails that
test until it is added here, and an entry no model uses any more fails it too.
"""

from __future__ import annotations

from typing import Any

# target -> {argument name: the one kind export writes it as}. Arguments at their default value
# are left out of the program (conv2d's dilation and groups, pad's mode...), and stay out.
T, INT, INTS, FLOAT, BOOL, NONE = "as_tensor", "as_int", "as_ints", "as_float", "as_bool", "as_none"
ALLOWED_OPS: dict[str, dict[str, str]] = {
    "torch.ops.aten.adaptive_avg_pool2d.default": {"self": T, "output_size": INTS},
    "torch.ops.aten.add.Tensor": {"self": T, "other": T},
    "torch.ops.aten.add_.Tensor": {"self": T, "other": T},
    "torch.ops.aten.batch_norm.default": {
        **{"input": T, "weight": T, "bias": T, "running_mean": T, "running_var": T},
        **{"training": BOOL, "momentum": FLOAT, "eps": FLOAT, "cudnn_enabled": BOOL},
    },
    "torch.ops.aten.conv2d.default": {
        **{"input": T, "weight": T, "bias": NONE, "stride": INTS, "padding": INTS},
    },
    "torch.ops.aten.div.Tensor": {"self": T, "other": T},
    "torch.ops.aten.flatten.using_ints": {"self": T, "start_dim": INT},
    "torch.ops.aten.linear.default": {"input": T, "weight": T, "bias": T},
    "torch.ops.aten.max_pool2d.default": {
        **{"self": T, "kernel_size": INTS, "stride": INTS, "padding": INTS},
    },
    "torch.ops.aten.pad.default": {"self": T, "pad": INTS},
    "torch.ops.aten.relu.default": {"self": T},
    "torch.ops.aten.relu_.default": {"self": T},
    "torch.ops.aten.slice.Tensor": {"self": T, "dim": INT, "start": INT, "end": INT, "step": INT},
    "torch.ops.aten.sub.Tensor": {"self": T, "other": T},
    "torch.ops.aten.upsample_bilinear2d.vec": {
        **{"input": T, "output_size": INTS, "align_corners": BOOL, "scale_factors": NONE},
    },
}
OUTPUT_KIND = T  # every one of these operators returns one tensor

# What each kind's value must look like in the JSON (the rest of what export writes for it).
_VALUE_CHECKS = {
    T: lambda v: isinstance(v, dict) and set(v) == {"name"} and isinstance(v["name"], str),
    INT: lambda v: type(v) is int,
    INTS: lambda v: isinstance(v, list) and all(type(i) is int for i in v),
    FLOAT: lambda v: type(v) in (int, float),
    BOOL: lambda v: type(v) is bool,
    NONE: lambda v: v is True,
}
_KIND_NAMES = {
    "as_string": "a string", "as_strings": "strings", "as_graph": "a graph",
    "as_operator": "an operator", "as_custom_obj": "a custom object", "as_device": "a device",
}  # fmt: skip


class RefusedOperator(ValueError):
    """A node of the program is outside `ALLOWED_OPS`; the message is one line."""


def check_nodes(program: Any) -> None:
    """Refuse a program (parsed `models/model.json`) any of whose nodes calls an operator, or
    passes an argument, outside `ALLOWED_OPS`."""
    try:
        nodes = program["graph_module"]["graph"]["nodes"]
    except (KeyError, TypeError):
        raise RefusedOperator("has no graph_module.graph.nodes") from None
    if not isinstance(nodes, list):
        raise RefusedOperator("has graph nodes that are not a list")
    for node in nodes:
        _check_node(node)


def _check_node(node: Any) -> None:
    target = node.get("target") if isinstance(node, dict) else None
    if not isinstance(target, str):
        raise RefusedOperator("has a graph node without a target")
    allowed = ALLOWED_OPS.get(target)
    if allowed is None:
        raise RefusedOperator(
            f"calls {target[:80]!r}, an operator none of the project's networks exports to"
        )
    inputs, outputs = node.get("inputs"), node.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise RefusedOperator(f"has a {target} node without inputs and outputs lists")
    for item in inputs:
        name = item.get("name") if isinstance(item, dict) else None
        arg = item.get("arg") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(arg, dict) or len(arg) != 1:
            raise RefusedOperator(f"has a {target} argument that is not one named value")
        if name not in allowed:
            raise RefusedOperator(
                f"passes {name[:40]!r} to {target}, an argument the project's networks never set"
            )
        ((kind, value),) = arg.items()
        if kind != allowed[name]:
            what = _KIND_NAMES.get(kind, f"{kind[:20]!r}")
            raise RefusedOperator(
                f"passes {name!r} to {target} as {what}, not as the {allowed[name]} export writes"
            )
        if not _VALUE_CHECKS[kind](value):
            raise RefusedOperator(f"passes {name!r} to {target} as a malformed {kind}")
    for out in outputs:
        if not (isinstance(out, dict) and set(out) == {OUTPUT_KIND}):
            raise RefusedOperator(f"has a {target} node with an output that is not one tensor")
        if not _VALUE_CHECKS[OUTPUT_KIND](out[OUTPUT_KIND]):
            raise RefusedOperator(f"has a {target} node with an output that is not one tensor")


def ops_of(program: Any) -> dict[str, dict[str, set[str]]]:
    """target -> {argument name: kinds} of every node of a program: what `ALLOWED_OPS` is
    compared with."""
    found: dict[str, dict[str, set[str]]] = {}
    for node in program["graph_module"]["graph"]["nodes"]:
        args = found.setdefault(node["target"], {})
        for item in node["inputs"]:
            args.setdefault(item["name"], set()).update(item["arg"])
    return found
