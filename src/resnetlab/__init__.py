"""resnetlab: a reproducible DVC + MLflow pipeline for residual networks on CIFAR-10, CIFAR-100
and your own images."""

__version__ = "0.1.0"
