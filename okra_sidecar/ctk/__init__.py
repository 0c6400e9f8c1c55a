"""The Serverless Workflow conformance kit (CTK), run through a real sidecar.

`python -m okra_sidecar.ctk` runs every scenario of `<spec>/ctk/features/*.feature` and prints
`N passed, M failed`; the spec folder comes from OKRA_SPEC_DIR.
"""

from __future__ import annotations

from okra_sidecar.ctk.features import Scenario, Step, parse_feature
from okra_sidecar.ctk.runner import ScenarioResult, run_features

__all__ = ["Scenario", "ScenarioResult", "Step", "parse_feature", "run_features"]
