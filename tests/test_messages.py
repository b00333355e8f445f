"""User-facing messages name real DVC stages: a stage name with a placeholder in it
(`train@<variant>`, `evaluate@tiny-<seed>`) would be printed as is, for the user to guess."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "resnetlab"
# A stage name whose variant or seed part is a placeholder.
PLACEHOLDER_STAGE = re.compile(r"(?:train|evaluate)@[\w{}.\[\]()'\"-]*<|-<seed>|-<k>")
# Templates filled in before anyone sees them (core.records._stage), not messages.
TEMPLATES = {"STAGE"}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _templates(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value and any(isinstance(t, ast.Name) and t.id in TEMPLATES for t in targets):
                found |= {id(n) for n in ast.walk(node.value)}
    return found


def placeholder_stages(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string in `source`, docstrings and templates aside, that names a
    stage with a placeholder; an f-string is read with its fields as `{...}`."""
    tree = ast.parse(source)
    skip = _docstrings(tree) | _templates(tree)
    skip |= {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if PLACEHOLDER_STAGE.search(text):
            found.append((node.lineno, text))
    return found


def test_no_message_names_a_stage_with_a_placeholder():
    found = [
        f"{path.relative_to(SRC)}:{line}: {text!r}"
        for path in sorted(SRC.rglob("*.py"))
        for line, text in placeholder_stages(path.read_text())
    ]
    assert not found, "\n".join(found)


def test_the_check_finds_what_it_looks_for():
    source = '''
def hint(variant):
    """Docstrings may describe `train@<variant>-<seed>`."""
    STAGE = "train@<variant>"
    a = "run `dvc repro train@<variant>` first"
    b = f"re-run `dvc repro evaluate@{variant}-<seed>`"
    c = f"re-run `dvc repro evaluate@{variant}-0`"
    return a, b, c
'''
    assert [line for line, _ in placeholder_stages(source)] == [5, 6]


def test_a_record_without_a_known_variant_names_the_stage_group(tmp_path):
    from resnetlab.core.records import _stage

    assert _stage("train@<variant>", None) == "train"
    assert _stage("train@<variant>", None, tmp_path / "resnet8" / "seed2" / "train.json") == (
        "train@resnet8-2"
    )
    assert _stage("evaluate@<variant>", "resnet8", tmp_path / "x" / "seed1" / "eval.json") == (
        "evaluate@resnet8-1"
    )
    # A run's metrics file, beside its folder: metrics/<variant>/seed<k>.json.
    assert _stage("evaluate@<variant>", None, tmp_path / "resnet8" / "seed1.json") == (
        "evaluate@resnet8-1"
    )
