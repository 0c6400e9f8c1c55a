"""Tests of okra_client."""
