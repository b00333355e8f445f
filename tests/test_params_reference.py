"""The parameter reference (`core/reference.py`, rendered into docs/params.md) covers exactly
the keys the config dataclasses define, and every key the shipped params.yaml sets."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from resnetlab.core import config
from resnetlab.core.reference import INTERNAL, MEANINGS, markdown, reference

REPO = Path(__file__).resolve().parents[1]


def _dataclass_keys(cls: type, prefix: str) -> set[str]:
    import typing

    hints = typing.get_type_hints(cls, vars(config))
    keys = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= _dataclass_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def test_every_field_has_a_meaning_and_every_meaning_a_field():
    sections = {
        "data": config.DataConfig,
        "mlflow": config.MlflowConfig,
        "train": config.TrainConfig,
        "evaluate": config.EvaluateConfig,
        "diagnose": config.DiagnoseConfig,
    }
    fields = set().union(*(_dataclass_keys(cls, f"{name}.") for name, cls in sections.items()))
    top = {f.name for f in dataclasses.fields(config.Params)} - set(sections) - INTERNAL
    assert set(MEANINGS) == fields | top
    assert [r.key for r in reference()] == list(dict.fromkeys(r.key for r in reference()))
    assert {r.key for r in reference()} == set(MEANINGS)


def _keys(raw: object, prefix: str = "") -> set[str]:
    if not isinstance(raw, dict):
        return {prefix.rstrip(".")}
    out = set()
    for k, v in raw.items():
        out |= _keys(v, f"{prefix}{k}.")
    return out


def test_every_key_of_the_shipped_params_is_in_the_reference():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    documented = {r.key for r in reference()}
    missing = []
    for key in sorted(_keys(raw)):
        section, _, rest = key.partition(".")
        if section == "variants":  # variants.<v>.model... or variants.<v>.<train key>
            _, _, own = rest.partition(".")
            if own.split(".")[0] == "model" or f"train.{own}" in documented:
                continue
        elif key.startswith("evaluate.tta_variants.") or key in documented:
            continue
        missing.append(key)
    assert not missing, missing


def test_the_table_has_a_row_per_key_and_no_raw_html():
    table = markdown().splitlines()
    assert len(table) == 2 + len(MEANINGS)
    for row in table[2:]:
        # `<variant>` outside code would be swallowed as an HTML tag by the docs.
        outside_code = row.split("`")[::2]
        assert not any(re.search(r"<[A-Za-z/!]", part) for part in outside_code), row
