"""The seed's twelve CEL policy snippets, verbatim, and a helper that makes each a document.

Each snippet is a fragment of a JSON object (some with `//` comments), exactly as the seed
interface prints it; `document()` only wraps it in braces.
"""

# The seed prints some snippets on lines longer than ours; verbatim wins.
# ruff: noqa: E501

from __future__ import annotations

# 1. Workflow execution permissions
EXECUTION_PERMISSIONS = """\
"policy.workflow.run.allowed": ["user.onboarding", "order.processing", "report.*"],
"policy.workflow.run.blocked": ["admin.dangerous", "legacy.*"]
"""

# 2. Conditional execution
CONDITIONAL_EXECUTION = """\
"policy.workflow.run.condition": "workflow.id != 'payment.process' || request.auth.claims.role == 'payment_admin'"
"""

# 3. Signal permissions
SIGNAL_PERMISSIONS = """\
"policy.workflow.signal.allowed": true,
"policy.workflow.signal.allowedSignals": ["approved", "rejected", "timeout"],
"policy.workflow.signal.condition": "instance.status == 'waiting' && request.auth.claims.canSignal"
"""

# 4. Query restrictions
QUERY_RESTRICTIONS = """\
"policy.workflow.query.maxResults": 100,
"policy.workflow.query.allowedStatuses": ["completed", "failed"],
"policy.workflow.query.condition": "request.auth.claims.role in ['admin', 'operator']"
"""

# 5. Rate limiting
RATE_LIMITING = """\
"policy.workflow.run.rateLimit": "100/minute",
"policy.workflow.signal.rateLimit": "1000/minute",
"policy.workflow.query.rateLimit": "100/minute"
"""

# 6. Instance limits
INSTANCE_LIMITS = """\
"policy.workflow.maxConcurrentInstances": 50,
"policy.workflow.maxInstancesPerWorkflow": {
  "user.onboarding": 100,
  "report.generation": 10
}
"""

# 7. Environment-specific policies
ENVIRONMENT_POLICIES = """\
"policy.workflow.condition": "env.DEPLOYMENT_ENV == 'production' ? workflow.id != 'test.*' : true"
"""

# 8. Input validation
INPUT_VALIDATION = """\
"policy.workflow.run.maxInputSizeKb": 100,
"policy.workflow.run.requiredInputFields": {
  "payment.process": ["amount", "currency", "customerId"]
}
"""

# 9. Cancellation policies
CANCELLATION_POLICIES = """\
"policy.workflow.cancel.allowed": true,
"policy.workflow.cancel.condition": "instance.status in ['pending', 'running'] && request.auth.claims.role == 'admin'",
"policy.workflow.cancel.requireReason": true
"""

# 10. Audit and monitoring
AUDIT_AND_MONITORING = """\
"policy.workflow.audit": true,
"policy.workflow.auditLevel": "full", // "none", "summary", "full"
"policy.workflow.alertOnFailure": ["payment.*", "compliance.*"]
"""

# 11. Cross-service restrictions
CROSS_SERVICE_RESTRICTIONS = """\
"policy.workflow.run.crossNamespace": false,
"policy.workflow.run.allowedNamespaces": ["app", "common"],
"policy.workflow.run.condition": "workflow.namespace == service.namespace || workflow.namespace == 'common'"
"""

# 12. Timeout policies
TIMEOUT_POLICIES = """\
"policy.workflow.maxDurationMinutes": 60,
"policy.workflow.defaultTimeoutMs": 300000,
"policy.workflow.timeoutAction": "fail" // "fail", "cancel", "continue"
"""

SNIPPETS = {
    "Workflow execution permissions": EXECUTION_PERMISSIONS,
    "Conditional execution": CONDITIONAL_EXECUTION,
    "Signal permissions": SIGNAL_PERMISSIONS,
    "Query restrictions": QUERY_RESTRICTIONS,
    "Rate limiting": RATE_LIMITING,
    "Instance limits": INSTANCE_LIMITS,
    "Environment-specific policies": ENVIRONMENT_POLICIES,
    "Input validation": INPUT_VALIDATION,
    "Cancellation policies": CANCELLATION_POLICIES,
    "Audit and monitoring": AUDIT_AND_MONITORING,
    "Cross-service restrictions": CROSS_SERVICE_RESTRICTIONS,
    "Timeout policies": TIMEOUT_POLICIES,
}


def document(snippet: str) -> str:
    """A snippet as a JSON document: the fragment between braces, unchanged."""
    return "{\n" + snippet + "}\n"
