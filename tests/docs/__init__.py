"""Tests that run the commands of the documentation (docs/)."""
