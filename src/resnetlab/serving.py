"""The pyfunc loader's old address. A model logged before the code moved into packages names
`resnetlab.serving` as its MLmodel's `loader_module`, and `mlflow models serve` imports that name;
new models name `resnetlab.tracking.serving`. Kept so that registered versions stay servable."""

from resnetlab.tracking.serving import _load_pyfunc

__all__ = ["_load_pyfunc"]
