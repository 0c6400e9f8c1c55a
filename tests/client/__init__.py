"""Tests of okra_sidecar.client."""
