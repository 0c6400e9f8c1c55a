"""okra-sidecar's test suite."""
