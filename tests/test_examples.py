"""The example definitions: valid for the sidecar and the official schema, and run end to end."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from jsonschema import validators
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from redis.asyncio import Redis

from okra_sidecar.cli import main as cli_main
from okra_sidecar.engine.definitions.dsl import parse_yaml
from okra_sidecar.engine.runtime.registry import read_directory
from tests.helpers import (
    KEYS,
    Stub,
    bad_request_fields,
    expect_rpc_error,
    index_size,
    make_settings,
    running_sidecar,
    to_python,
    value,
    wait_for_status,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO_ROOT / "examples" / "workflows"
SPEC_DIR_ENV = "OKRA_SPEC_DIR"
EXAMPLE_IDS = ["examples.approval.1.0.0", "examples.order.1.0.0", "examples.reminder.1.0.0"]
DONE = {pb.WORKFLOW_STATUS_COMPLETED, pb.WORKFLOW_STATUS_FAILED}
REMINDER_WAIT_S = 5.0


def spec_dir() -> Path:
    """The Serverless Workflow specification checkout: `$OKRA_SPEC_DIR` or next to the repo."""
    configured = os.environ.get(SPEC_DIR_ENV)
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "serverless-workflow"


def example_files() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


@pytest_asyncio.fixture
async def examples(redis: Redis, redis_url: str) -> AsyncIterator[Stub]:
    """A sidecar serving examples/workflows, on the flushed test Redis."""
    async with running_sidecar(make_settings(redis_url, workflows=EXAMPLES_DIR)) as (_, stub):
        yield stub


async def run(stub: Stub, workflow_id: str, data: Any) -> str:
    request = pb.RunRequest(workflow_id=workflow_id, input=value(data))
    return (await stub.Run(request)).instance_id


# -- the definitions ----------------------------------------------------------------------------


def test_examples_load_with_the_sidecar_compiler() -> None:
    definitions = read_directory(EXAMPLES_DIR)
    assert sorted(d.id for d in definitions) == EXAMPLE_IDS
    assert all(d.namespace == "examples" and d.input_schema for d in definitions)


def test_validate_command_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["validate", str(EXAMPLES_DIR)]) == 0
    assert sorted(capsys.readouterr().out.split("\n")) == [
        "",
        *(f"ok {workflow_id}" for workflow_id in EXAMPLE_IDS),
    ]


def test_examples_match_the_official_schema() -> None:
    schema_path = spec_dir() / "schema" / "workflow.yaml"
    if not schema_path.is_file():
        pytest.skip(
            f"the DSL's JSON schema is not at {schema_path}; set {SPEC_DIR_ENV} to a checkout "
            "of the Serverless Workflow specification to run this test"
        )
    # The DSL's own YAML reading: under PyYAML's YAML 1.1 rules `on:` would be a boolean key.
    schema = parse_yaml(schema_path.read_text())
    validator_class = validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    for path in example_files():
        document = parse_yaml(path.read_text())
        problems = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)
        ]
        assert problems == [], f"{path.name} breaks the DSL schema"
        # The schema is not vacuous: the same document without its tasks is refused.
        broken = copy.deepcopy(document)
        del broken["do"]
        assert not validator.is_valid(broken)


# -- approval -----------------------------------------------------------------------------------


async def test_approval_approves_small_amounts_at_once(examples: Stub) -> None:
    instance_id = await run(examples, "examples.approval.1.0.0", {"requester": "ada", "amount": 42})
    done = await wait_for_status(examples, instance_id, DONE)
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED
    assert to_python(done.output) == {
        "requester": "ada",
        "amount": 42,
        "approved": True,
        "by": "auto",
    }


async def test_approval_waits_for_an_approve_signal(examples: Stub) -> None:
    instance_id = await run(examples, "examples.approval", {"requester": "ada", "amount": 120})
    waiting = await wait_for_status(examples, instance_id, {pb.WORKFLOW_STATUS_WAITING})
    assert waiting.workflow_id == "examples.approval.1.0.0"
    assert waiting.current_step == "/do/2/awaitDecision"
    assert dict(waiting.variables) == {"requester": "ada", "amount": 120}
    await examples.Signal(
        pb.SignalRequest(
            instance_id=instance_id,
            signal="approve",
            payload=value({"by": "grace", "comment": "within budget"}),
        )
    )
    done = await wait_for_status(examples, instance_id, DONE)
    assert to_python(done.output) == {
        "requester": "ada",
        "amount": 120,
        "approved": True,
        "by": "grace",
        "comment": "within budget",
    }


async def test_approval_rejects_and_ignores_other_signals(examples: Stub) -> None:
    instance_id = await run(examples, "examples.approval.1.0.0", {"requester": "bo", "amount": 900})
    for name, payload in (("ping", {"by": "nobody"}), ("reject", {"by": "grace"})):
        await examples.Signal(
            pb.SignalRequest(instance_id=instance_id, signal=name, payload=value(payload))
        )
    done = await wait_for_status(examples, instance_id, DONE)
    assert to_python(done.output) == {
        "requester": "bo",
        "amount": 900,
        "approved": False,
        "by": "grace",
        "comment": "",
    }


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"requester": "ada", "amount": -5}, "input.amount"),
        ({"requester": "ada"}, "input"),
        ({"requester": "ada", "amount": 5, "extra": True}, "input"),
    ],
)
async def test_approval_input_schema_is_enforced(examples: Stub, data: Any, field: str) -> None:
    error = await expect_rpc_error(
        run(examples, "examples.approval.1.0.0", data), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert bad_request_fields(error) == [field]


# -- order --------------------------------------------------------------------------------------

MUGS = [{"sku": "mug", "quantity": 2, "priceCents": 1250}]


@pytest.mark.parametrize(
    ("order", "priced"),
    [
        (
            {"kind": "physical", "items": MUGS, "shipTo": {"name": "Ada", "country": "NL"}},
            {"delivery": "parcel", "subtotalCents": 2500, "shippingCents": 499},
        ),
        (
            {"kind": "physical", "items": MUGS, "shipTo": {"country": "BE"}},
            {"delivery": "parcel", "subtotalCents": 2500, "shippingCents": 1499},
        ),
        (
            {
                "kind": "physical",
                "items": [*MUGS, {"sku": "pot", "quantity": 1, "priceCents": 4500}],
                "shipTo": {"country": "BE"},
            },
            {"delivery": "parcel", "subtotalCents": 7000, "shippingCents": 0},
        ),
        (
            {"kind": "digital", "items": [{"sku": "ebook", "quantity": 1, "priceCents": 999}]},
            {"delivery": "download", "subtotalCents": 999, "shippingCents": 0},
        ),
    ],
)
async def test_order_prices_and_ships(
    examples: Stub, order: dict[str, Any], priced: dict[str, Any]
) -> None:
    instance_id = await run(examples, "examples.order.1.0.0", {"orderId": "A-1", **order})
    done = await wait_for_status(examples, instance_id, DONE)
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED, done.error
    total = priced["subtotalCents"] + priced["shippingCents"]
    assert to_python(done.output) == {"orderId": "A-1", **priced, "totalCents": total}


async def test_order_without_address_fails_with_a_problem(examples: Stub) -> None:
    data = {"orderId": "A-2", "kind": "physical", "items": MUGS}
    failed = await wait_for_status(examples, await run(examples, "examples.order", data), DONE)
    assert failed.status == pb.WORKFLOW_STATUS_FAILED
    assert failed.error == pb.WorkflowError(
        type="https://okra.dev/errors/order/no-shipping-address",
        status=422,
        title="Order cannot be shipped",
        detail="order A-2 has 2 physical item(s) but no shipTo address",
        instance="/do/5/rejectOrder",
    )
    assert not failed.HasField("output")


async def test_order_input_schema_is_enforced(examples: Stub, redis: Redis) -> None:
    error = await expect_rpc_error(
        run(examples, "examples.order.1.0.0", {"orderId": "A-3", "kind": "boat", "items": []}),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request_fields(error) == ["input.items", "input.kind"]
    assert await index_size(redis, KEYS.index_all) == 0


# -- reminder -----------------------------------------------------------------------------------


async def test_reminder_waits_durably_then_delivers(examples: Stub) -> None:
    started = time.monotonic()
    data = {"to": "ada", "message": "stand up"}
    instance_id = await run(examples, "examples.reminder.1.0.0", data)
    waiting = await wait_for_status(examples, instance_id, {pb.WORKFLOW_STATUS_WAITING})
    assert waiting.current_step == "/do/0/pause"
    done = await wait_for_status(examples, instance_id, DONE, timeout_s=REMINDER_WAIT_S + 10)
    assert time.monotonic() - started >= REMINDER_WAIT_S
    assert done.status == pb.WORKFLOW_STATUS_COMPLETED
    assert to_python(done.output) == {**data, "delivered": True}
