"""The pyfunc flavor of the models the train stage logs: class names and probabilities.

MLflow's `python_function` loader (`mlflow.pyfunc.load_model`, `mlflow models serve`) imports the
MLmodel's `loader_module`, this module, and calls `_load_pyfunc(<model>/data)`. The network comes
from `tracking.logged_model.load`, which checks the folder (pt2 program, no code paths, nothing
pickled) before torch reads it: serving runs nothing the model folder brings. Neither MLflow nor
torch is imported before a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnetlab.data.cifar10 import CHANNELS, IMAGE_SIZE

if TYPE_CHECKING:
    import pandas as pd
    import torch


class ClassProbabilities:
    """N x 3 x 32 x 32 float images in [0, 1] -> one row per image: `class` (the predicted
    name), `probability` (its softmax probability) and one column per class name."""

    def __init__(self, network: torch.nn.Module, classes: list[str]):
        self.network = network
        self.classes = classes

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import numpy as np
        import pandas as pd
        import torch

        images = np.asarray(model_input, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (CHANNELS, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected N x 3 x 32 x 32 images in [0, 1], got {images.shape}")
        with torch.no_grad():
            logits = self.network(torch.from_numpy(images))
        probabilities = torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)
        best = probabilities.argmax(1)
        frame = pd.DataFrame(probabilities, columns=self.classes)
        frame.insert(0, "probability", probabilities[np.arange(len(best)), best])
        frame.insert(0, "class", np.asarray(self.classes)[best])
        return frame


def _load_pyfunc(data_path: str, model_config: Any = None) -> ClassProbabilities:
    """MLflow's pyfunc hook; `model_config` (MLflow's per-load settings) has nothing to set."""
    from resnetlab.core.errors import ResnetlabError
    from resnetlab.tracking.logged_model import load

    network, classes = load(Path(data_path).parent)
    if not classes:
        raise ResnetlabError(f"{Path(data_path).parent / 'MLmodel'}: no metadata.classes")
    return ClassProbabilities(network, classes)
