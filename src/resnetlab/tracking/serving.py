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

from resnetlab.data.datasets import CHANNELS

if TYPE_CHECKING:
    import pandas as pd
    import torch

# The most images one `predict` call (one request to the scoring server) takes: 1024 is ~12 MB of
# float32 and a few seconds on one CPU core, well inside the server's 60 s request timeout; 10,000
# timed out there and left the server holding ~0.9 GB. Send more as several requests.
MAX_IMAGES = 1024


class ClassProbabilities:
    """N x 3 x S x S float images in [0, 1] (S the model's `image_size`) -> one row per image:
    `class` (the predicted name), `probability` (its softmax probability) and one column per
    class name."""

    def __init__(self, network: torch.nn.Module, classes: list[str], image_size: int):
        self.network = network
        self.classes = classes
        self.image_size = image_size

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import numpy as np
        import pandas as pd
        import torch

        if len(model_input) > MAX_IMAGES:
            raise refused(
                f"{len(model_input)} images in one request; at most {MAX_IMAGES}: send them as "
                "several requests"
            )
        images = np.asarray(model_input, dtype=np.float32)
        side = self.image_size
        expected = f"N x {CHANNELS} x {side} x {side} images in [0, 1]"
        if images.ndim != 4 or images.shape[1:] != (CHANNELS, side, side):
            raise refused(f"expected {expected}, got {images.shape}")
        bad = ~np.isfinite(images) | (images < 0) | (images > 1)
        if bad.any():
            first = int(np.flatnonzero(bad.reshape(len(images), -1).any(1))[0])
            raise refused(
                f"image {first} (of {len(images)}) has a pixel that is NaN, infinite or outside "
                f"[0, 1]; expected {expected}"
            )
        with torch.no_grad():
            logits = self.network(torch.from_numpy(images))
        probabilities = torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)
        best = probabilities.argmax(1)
        frame = pd.DataFrame(probabilities, columns=self.classes)
        frame.insert(0, "probability", probabilities[np.arange(len(best)), best])
        frame.insert(0, "class", np.asarray(self.classes)[best])
        return frame


def refused(message: str) -> Exception:
    """An input error whose message reaches the client as is: MLflow's scoring server answers an
    MlflowException with INVALID_PARAMETER_VALUE with status 400 and its message, but first
    rewrites the message to start with the repr of the whole input (numpy's summary of the
    array, dozens of lines); this one keeps its one line."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class InputRefused(MlflowException, ValueError):
        @property
        def message(self) -> str:
            return self.__dict__["_line"]

        @message.setter
        def message(self, value: str) -> None:
            self.__dict__.setdefault("_line", value)  # the first, MlflowException.__init__'s

    return InputRefused(message, error_code=INVALID_PARAMETER_VALUE)


def _load_pyfunc(data_path: str, model_config: Any = None) -> ClassProbabilities:
    """MLflow's pyfunc hook; `model_config` (MLflow's per-load settings) has nothing to set."""
    from resnetlab.core.errors import ResnetlabError
    from resnetlab.tracking.logged_model import load

    network, classes, image_size = load(Path(data_path).parent)
    if not classes:
        raise ResnetlabError(f"{Path(data_path).parent / 'MLmodel'}: no metadata.classes")
    return ClassProbabilities(network, classes, image_size)
