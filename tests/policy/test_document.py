"""Policy documents: every seed snippet loads; a bad key refuses the whole set, naming it."""

from __future__ import annotations

import pytest

from okra_sidecar.admission import MAX_INSTANCES_PER_WORKFLOW
from okra_sidecar.errors import PolicyLoadError
from okra_sidecar.policy import document as keys
from okra_sidecar.policy.cel import CelEngine
from okra_sidecar.policy.document import load_policy_text, strip_json_comments
from tests.policy import seed

ENV = frozenset({"DEPLOYMENT_ENV"})


@pytest.mark.parametrize("name", list(seed.SNIPPETS))
def test_every_seed_snippet_loads_verbatim(cel: CelEngine, name: str) -> None:
    snippet = seed.SNIPPETS[name]
    policies = load_policy_text(seed.document(snippet), cel=cel, env_names=ENV, source=name)
    assert set(policies.document) <= keys.KNOWN_KEYS
    assert len(policies.document) == snippet.count('"policy.workflow.')


def test_snippet_values_are_read(cel: CelEngine) -> None:
    def load(snippet: str) -> keys.PolicySet:
        return load_policy_text(seed.document(snippet), cel=cel, env_names=ENV, source="seed")

    limits = load(seed.INSTANCE_LIMITS)
    assert limits.max_concurrent_instances == 50
    assert limits.workflow_limit("user.onboarding") == 100
    assert limits.workflow_limit("report.generation") == 10
    assert limits.workflow_limit("other.flow") == 0
    audit = load(seed.AUDIT_AND_MONITORING)
    assert audit.audit_level == "full"
    timeouts = load(seed.TIMEOUT_POLICIES)
    assert (timeouts.max_duration_ms, timeouts.default_timeout_ms) == (3_600_000, 300_000)
    assert timeouts.timeout_action == "fail"
    inputs = load(seed.INPUT_VALIDATION)
    assert inputs.run_max_input_bytes == 100 * 1024
    rates = load(seed.RATE_LIMITING).rates
    assert (rates["run"].limit, rates["signal"].limit, rates["query"].limit) == (100, 1000, 100)


def test_comments_are_stripped_outside_strings_only() -> None:
    text = '{"a": "x // not a comment", /* gone */ "b": 1 // gone\n}'
    assert strip_json_comments(text) == '{"a": "x // not a comment",   "b": 1 \n}'


def test_nested_yaml_means_the_same_keys(cel: CelEngine) -> None:
    text = (
        "policy:\n"
        "  workflow:\n"
        "    run:\n"
        "      allowed: [report.*]\n"
        "      rateLimit: 5/second\n"
        "    maxConcurrentInstances: 3\n"
    )
    policies = load_policy_text(text, cel=cel, env_names=ENV, source="nested.yaml")
    assert policies.document == {
        keys.RUN_ALLOWED: ["report.*"],
        keys.RUN_RATE_LIMIT: "5/second",
        keys.MAX_CONCURRENT_INSTANCES: 3,
    }


def test_empty_document_is_no_policy(cel: CelEngine) -> None:
    policies = load_policy_text("", cel=cel, env_names=ENV, source="empty")
    assert policies.document == {} and not policies.conditions and policies.audit_level == "none"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (
            # Two seed snippets both set run.condition: a document must combine them itself.
            seed.document(seed.CONDITIONAL_EXECUTION + "," + seed.CROSS_SERVICE_RESTRICTIONS),
            keys.RUN_CONDITION,
            "appears twice",
        ),
        ('{"policy.workflow.run.alowed": []}', "policy.workflow.run.alowed", "did you mean"),
        ('{"policy.workflow.run.condition": "1 +"}', keys.RUN_CONDITION, "not valid CEL"),
        (
            '{"policy.workflow.run.condition": "instance.status == \'waiting\'"}',
            keys.RUN_CONDITION,
            "`instance` is not available to this policy",
        ),
        (
            '{"policy.workflow.condition": "env.HOME == \'/\'"}',
            keys.CONDITION,
            "env.HOME is not in the environment allow-list",
        ),
        (
            '{"policy.workflow.cancel.condition": "workflow.idd == \'x\'"}',
            keys.CANCEL_CONDITION,
            "workflow has no field `idd`",
        ),
        ('{"policy.workflow.query.maxResults": 5000}', keys.QUERY_MAX_RESULTS, "at most 1000"),
        ('{"policy.workflow.signal.allowed": "yes"}', keys.SIGNAL_ALLOWED, "true or false"),
        ('{"policy.workflow.timeoutAction": "retry"}', keys.TIMEOUT_ACTION, "fail, cancel"),
        ('{"policy.workflow.auditLevel": "all"}', keys.AUDIT_LEVEL, "none, summary, full"),
        ('{"policy.workflow.run.rateLimit": "lots"}', keys.RUN_RATE_LIMIT, "is not a rate"),
        (
            '{"policy.workflow.maxInstancesPerWorkflow": {"a.b.1.0.0": 3}}',
            MAX_INSTANCES_PER_WORKFLOW,
            "names a version",
        ),
        (
            '{"policy.workflow.query.allowedStatuses": ["done"]}',
            keys.QUERY_ALLOWED_STATUSES,
            "list of statuses",
        ),
        ("[1, 2]", "bad", "must be a mapping"),
        ("{nope", "bad", "neither JSON nor YAML"),
    ],
)
def test_a_bad_key_refuses_the_whole_set(cel: CelEngine, text: str, key: str, problem: str) -> None:
    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text(text, cel=cel, env_names=ENV, source="bad")
    assert problem in str(raised.value)
    assert "refused, the set in force stays" in str(raised.value)
    assert raised.value.violations[0].field == key


def test_every_problem_is_reported_at_once(cel: CelEngine) -> None:
    text = (
        '{"policy.workflow.run.condition": "1 +", "policy.workflow.maxDurationMinutes": -1,'
        ' "policy.workflow.run.allowed": ["ok.*"]}'
    )
    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text(text, cel=cel, env_names=ENV, source="bad")
    assert [v.field for v in raised.value.violations] == [
        keys.RUN_CONDITION,
        keys.MAX_DURATION_MINUTES,
    ]
