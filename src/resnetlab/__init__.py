"""resnetlab: a reproducible DVC + MLflow pipeline for residual networks on CIFAR-10."""

__version__ = "0.1.0"
