"""Tests of okra_sidecar.store."""
