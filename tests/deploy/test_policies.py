"""deploy/policies.yaml is a policy document the sidecar's loader accepts."""

from __future__ import annotations

from okra_sidecar.policy.cel import CelEngine
from okra_sidecar.policy.document import load_policy_text
from tests.deploy.support import DEPLOY_DIR


def test_example_policies_compile() -> None:
    path = DEPLOY_DIR / "policies.yaml"
    policies = load_policy_text(
        path.read_text(), cel=CelEngine(), env_names=frozenset(), source=str(path)
    )
    assert policies.query_max_results == 100
    assert policies.cancel_require_reason is True
