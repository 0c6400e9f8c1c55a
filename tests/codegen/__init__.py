"""Tests of okra_sidecar.codegen and `okra-sidecar codegen`."""
