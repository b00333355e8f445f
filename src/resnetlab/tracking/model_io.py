"""The model as MLflow holds it: exported (torch.export's pt2 program, nothing pickled), logged,
registered, and found again from a model URI. Loading it safely is `tracking.logged_model`'s job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from resnetlab.core.errors import ResnetlabError, first_line
from resnetlab.tracking.store import (
    UPLOAD_S,
    Caller,
    client,
    default_uri_as,
    quote,
    tracking_uri,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlflow.tracking import MlflowClient

    from resnetlab.tracking.registry import VersionFacts


# The module MLflow's pyfunc flavor imports to load the logged models (serving.py).
PYFUNC_LOADER = "resnetlab.tracking.serving"


def registered_name(variant: str) -> str:
    return f"resnetlab-{variant}"


def ensure_registered_model(c: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name, description=f"resnetlab variant {name[10:]}")
    except MlflowException as exc:  # it exists (made by an earlier or a concurrent training)
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise


@dataclass
class ModelUpload:
    """Logs an exported model folder as the run's logged model and registers it as the next
    version of `resnetlab-<variant>`: each step once, even when a retry follows a call that was
    abandoned half way (the ids it got are kept)."""

    model_id: str = ""  # the logged model, once created
    uploaded: bool = False  # its files, once uploaded and the model finalized
    model_version: str = ""  # its registered version, once registered
    digest: str = ""  # of the uploaded folder (`model_digest`), once computed

    def __call__(
        self,
        local: Path,
        run_id: str,
        name: str,
        params: Mapping[str, str],
        c: MlflowClient,
        facts: VersionFacts | None = None,
    ) -> None:
        """Each step not done yet; `facts` describe the registered version (`registry`)."""
        from mlflow.entities import LoggedModelOutput

        from resnetlab.tracking.model_digest import DIGEST_TAG, folder_digest
        from resnetlab.tracking.registry import VersionFacts, point_best_alias

        if not self.model_id:
            # Of the files uploaded below, recorded as a tag of the logged model and of the
            # registered version, in the store's database: `resnetlab serve` refuses a folder
            # whose files differ.
            self.digest = folder_digest(local)
            exp_id = c.get_run(run_id).info.experiment_id
            logged = c.create_logged_model(
                exp_id, name=name, source_run_id=run_id, params=dict(params),
                tags={DIGEST_TAG: self.digest}, model_type="resnetlab-classifier",
            )  # fmt: skip
            self.model_id = logged.model_id
        if not self.uploaded:
            # Again after a call abandoned half way: uploading the same files twice is harmless.
            c.log_model_artifacts(self.model_id, str(local))
            c.finalize_logged_model(self.model_id, "READY")
            c.log_outputs(run_id, [LoggedModelOutput(self.model_id, 0)])
            self.uploaded = True
        if not self.model_version:
            registered = registered_name(name)
            ensure_registered_model(c, registered)
            # A local registry looks `models:/<model id>` up on MLflow's global tracking URI,
            # not on `c`'s (see `default_uri_as`).
            facts = facts or VersionFacts()
            tags = {**facts.tags, "variant": name, DIGEST_TAG: self.digest}
            with default_uri_as(c.tracking_uri):
                version = c.create_model_version(
                    registered, f"models:/{self.model_id}", run_id=run_id, model_id=self.model_id,
                    await_creation_for=0, tags=tags, description=facts.description or None,
                )  # fmt: skip
            self.model_version = str(version.version)
            point_best_alias(c, registered)


def save_model_artifact(
    model: torch.nn.Module, local: Path, input_example: np.ndarray, classes: Sequence[str]
) -> None:
    """Save `model` as an MLflow model folder at `local`, in the one format
    `tracking.logged_model` loads back: pt2 (torch.export's program), no code paths, nothing
    pickled. Two flavors read that one program: `pytorch` (`mlflow.pytorch.load_model`: the
    network, [0, 1] N x 3 x S x S images in, S the side of `input_example`'s, logits out) and
    `python_function`, whose loader is `tracking.serving` (pyfunc and `mlflow models serve`:
    one row per image with the predicted class, its probability and every class's
    probability; the output schema names the classes).
    """
    import mlflow.pytorch
    import numpy as np
    import torch
    import torchvision
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    model = model.cpu().eval()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_example.shape[1:]))]),
        outputs=Schema(
            [ColSpec("string", "class"), ColSpec("double", "probability")]
            + [ColSpec("double", name) for name in classes]
        ),
    )
    mlflow.pytorch.save_model(
        model,
        str(local),
        signature=signature,
        input_example=input_example,
        # What serving, `predict` and the app read back: the class names, the input's side.
        metadata={"classes": list(classes), "image_size": int(input_example.shape[-1])},
        # torch.export's program: loading it runs no pickled code and needs no resnetlab.
        serialization_format="pt2",
        # Explicit requirements skip MLflow's slow inference of them. The pyfunc loader is
        # resnetlab's: serve with `--env-manager local` in an environment that has it installed.
        pip_requirements=[
            f"mlflow=={mlflow.__version__}",
            f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
        ],
    )
    spec = Model.load(str(local / "MLmodel"))
    # Named, not imported: the train stage never runs the loader (nor its imports).
    spec.flavors["python_function"]["loader_module"] = PYFUNC_LOADER
    spec.save(str(local / "MLmodel"))
    # The checks predict, the app and serving run before they load a model: a network whose
    # export calls an operator outside `pt2_ops.ALLOWED_OPS` fails here, when it is trained, not
    # when someone loads it.
    from resnetlab.tracking import logged_model

    logged_model.check_mlmodel(local)
    archive = logged_model.MODEL_FILE
    blob = logged_model.read_regular(local, archive, logged_model.MAX_ARCHIVE_BYTES)
    logged_model.check_archive(blob, local / archive)


def model_folder(model_uri: str) -> Path:
    """A local folder holding the MLflow model at `model_uri` (`runs:/<id>/model`,
    `models:/<name>/<version>`, a local path, ...); downloads only from remote stores. Nothing
    in it is loaded here: see `tracking.logged_model`."""
    check_model_uri(model_uri)
    uri = tracking_uri()
    calls = Caller(uri)
    try:
        if urlparse(model_uri).scheme in ("runs", "models"):
            calls.probe()
        return calls(lambda: _local_model_dir(model_uri), UPLOAD_S)
    except ResnetlabError:
        raise
    except Exception as exc:
        raise ResnetlabError(
            f"cannot load the MLflow model {model_uri} (tracking store {uri}): {first_line(exc)}"
        ) from None


MODEL_URI_FORMS = "runs:/<run id>/<variant>, models:/<name>/<version> or a local folder"


def check_model_uri(model_uri: str) -> None:
    """Refuse, in one line, what cannot be a model URI: nothing, a web address (MLflow would
    take it for an artifact server and fail on its reply), a `runs:/` or `models:/` URI without
    its parts."""
    parsed = urlparse(model_uri)
    problem = None
    if not model_uri.strip():
        problem = "no model URI given"
    elif parsed.scheme in ("http", "https", "ftp"):
        problem = (
            f"{model_uri}: a web address, not a model URI (a model on a tracking server is "
            "reached with MLFLOW_TRACKING_URI set to the server and its runs:/ or models:/ URI)"
        )
    elif parsed.scheme == "runs" and not all(model_uri[len("runs:/") :].partition("/")[::2]):
        problem = f"{model_uri}: a runs:/ URI names the run and the model"
    elif parsed.scheme == "models" and not model_uri[len("models:/") :].strip("/"):
        problem = f"{model_uri}: a models:/ URI names the model"
    if problem:
        raise ResnetlabError(f"{problem}; expected {MODEL_URI_FORMS}")


def _local_model_dir(model_uri: str) -> Path:
    parsed = urlparse(model_uri)
    source = model_uri
    if parsed.scheme == "runs":
        run_id, _, path = model_uri[len("runs:/") :].partition("/")
        source = _run_model_location(client(), run_id, path)
    elif parsed.scheme == "models":
        name, _, version = model_uri[len("models:/") :].partition("/")
        if version:
            source = client().get_model_version_download_uri(name, version)
        if source.startswith("models:/"):  # a logged model: models:/<model id>
            model_id = source[len("models:/") :].strip("/")
            source = client().get_logged_model(model_id).artifact_location
    local = urlparse(source)
    if local.scheme in ("", "file"):
        folder = Path(local.path if local.scheme else source)
        if not os.path.lexists(folder / "MLmodel"):  # a link or FIFO: logged_model refuses it
            raise ResnetlabError(f"{folder}: no MLmodel file there")
        return folder
    import mlflow.artifacts

    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri())
    )


def _run_model_location(c: MlflowClient, run_id: str, name: str) -> str:
    """Where `runs:/<run_id>/<name>` lives: the logged model `name` the run made (MLflow 3),
    else the run's artifact folder `name` (models logged as run artifacts)."""
    run = c.get_run(run_id)
    for found in c.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"name = '{quote(name)}'"
    ):
        if found.source_run_id == run_id:
            return found.artifact_location
    return run.info.artifact_uri.rstrip("/") + "/" + name


def registered_model_uris(limit: int = 200) -> list[str]:
    """`models:/<name>/<version>` for the registered model versions in the store (by name, the
    newest version first); none if the store has no registry or cannot be read."""
    try:
        versions = client().search_model_versions(max_results=limit)
    except Exception as exc:  # an unreachable store must not break the caller's page
        log.warning("cannot list registered models in %s: %s", tracking_uri(), first_line(exc))
        return []
    ordered = sorted(versions, key=lambda v: (v.name, -int(v.version)))
    return [f"models:/{v.name}/{v.version}" for v in ordered]
