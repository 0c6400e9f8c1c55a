"""The pure interpreter: state, inbox signals and a clock in, new state and effects out.

Nothing here does I/O: no asyncio, Redis, gRPC or store (tests/test_import_rules.py)."""
