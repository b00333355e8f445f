"""The diagnose stage: per-layer gradient norms of freshly initialised plain and residual nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from resnetlab.cli import main
from resnetlab.pipeline import diagnose
from resnetlab.report.gradients import gradient_profiles


def test_gradient_profile_table(tmp_path: Path) -> None:
    path = diagnose.write_gradient_profile(tmp_path / "g.csv", depths=(8, 14))
    frame = pd.read_csv(path)
    assert list(frame.columns) == list(diagnose.COLUMNS)
    labels = ["plain-8", "resnet_v1-8", "plain-14", "resnet_v1-14"]
    assert frame["label"].unique().tolist() == labels
    # A plain net of depth d has d weight layers (convolutions + the classifier), 1-based.
    for d in (8, 14):
        layers = frame[frame["label"] == f"plain-{d}"]
        assert layers["layer_index"].tolist() == list(range(1, d + 1))
    assert (frame["grad_norm"] > 0).all()
    # Same seed, same numbers: the profile is reproducible.
    again = gradient_profiles(depths=(8,))
    first = frame[frame["label"] == "plain-8"]["grad_norm"].to_numpy()
    np.testing.assert_allclose(list(again["plain-8"].values()), first, rtol=1e-6)


def test_cli_reads_its_params_and_rejects_bad_depths(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    out = tmp_path / "g.csv"
    params.write_text(yaml.safe_dump({"diagnose": {"gradient_depths": [8], "seed": 1}}))
    assert main(["diagnose", "--params", str(params), "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["label"]) == {"plain-8", "resnet_v1-8"}

    params.write_text(yaml.safe_dump({"diagnose": {"gradient_depths": [9]}}))
    out.unlink()
    assert main(["diagnose", "--params", str(params), "--out", str(out)]) == 1
    assert "diagnose.gradient_depths[0]: 9 is not allowed" in capsys.readouterr().err
    assert not out.exists()
