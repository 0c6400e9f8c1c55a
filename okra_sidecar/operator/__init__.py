"""The `okra` command: an operator's CLI for a sidecar, over the Python client."""
