"""`dvc repro` of the download and prepare stages in a temp git repo, with a tiny mirror."""

from __future__ import annotations

import numpy as np
import pytest
from dvc_project import DvcProject, tiny_params

pytestmark = pytest.mark.slow


def test_dvc_repro_download_prepare(tiny_archive, tmp_path):
    archive, md5 = tiny_archive
    params = tiny_params(archive, md5)
    project = DvcProject(tmp_path / "proj", params)

    assert project.repro("prepare") == ["download", "prepare"]
    train = np.load(project.root / "data/prepared/train_labels.npy")
    assert len(train) == 250
    project.commit("first run")

    assert project.repro("prepare") == []  # nothing changed, nothing runs

    params["data"]["val_size"] = 100
    project.write_params(params)
    assert project.repro("prepare") == ["prepare"]  # download does not read val_size
    assert len(np.load(project.root / "data/prepared/val_labels.npy")) == 100
    diff = project.dvc("params", "diff").stdout
    assert "data.val_size" in diff and "50" in diff and "100" in diff
