"""Workflow definitions: parse a DSL document, check it and compile its tasks."""
