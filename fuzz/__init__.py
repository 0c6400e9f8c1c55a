"""The request fuzzer: malformed and hostile requests for every rpc (`python -m fuzz`)."""

from fuzz.generate import METHODS, FuzzCase, RequestGenerator
from fuzz.run import FuzzReport, run_fuzz

__all__ = ["METHODS", "FuzzCase", "FuzzReport", "RequestGenerator", "run_fuzz"]
