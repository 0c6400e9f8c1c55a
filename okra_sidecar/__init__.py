"""okra-sidecar: a durable workflow sidecar over Redis."""

__version__ = "0.1.0"
