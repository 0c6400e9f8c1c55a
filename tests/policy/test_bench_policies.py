"""The benchmark's policy set: the seed's full set and the other rpcs' keys, all accepted."""

from __future__ import annotations

from bench.policies import SEED_FULL_SET
from okra_sidecar.policy.cel import CelEngine
from okra_sidecar.policy.document import KNOWN_KEYS, compile_policies


def test_the_bench_sets_every_policy_key(cel: CelEngine) -> None:
    assert set(SEED_FULL_SET) == KNOWN_KEYS
    policies = compile_policies(
        SEED_FULL_SET, cel=cel, env_names=frozenset({"DEPLOYMENT_ENV"}), source="bench"
    )
    assert policies.audit_level == "full"
    assert len(policies.conditions) == 16  # the seed's five and those of the other rpcs
