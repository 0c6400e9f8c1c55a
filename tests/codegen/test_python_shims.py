"""Python shims: mypy --strict accepts right callers, rejects wrong ones, and notices a schema
change; the generated helper runs a workflow on a real sidecar."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from okra_client import InputSchemaMismatchError, OkraClient, WorkflowStatus
from redis.asyncio import Redis

from okra_sidecar.cli import main as cli_main
from tests.codegen.support import (
    WORKFLOWS_DIR,
    copy_workflows,
    error_lines,
    marked_lines,
    rename_order_id,
)
from tests.helpers import make_settings, running_sidecar

BIN = Path(sys.executable).parent
CALL_TIMEOUT_S = 20.0  # a bound for the test only
MYPY_ERROR = r"^{file}:(?P<line>\d+): error:"

CALLER = """\
from __future__ import annotations

from typing import Any

from okra_client import OkraClient
from shims.shop_checkout_v2_1_0 import CheckoutInput, CheckoutOutput, run_checkout, start_checkout
from shims.shop_ping_v1_0_0 import ping_handle, run_ping
from shims.shop_refund_v1_0_0 import RefundOutput, refund_handle, start_refund


async def place(client: OkraClient) -> str:
    order: CheckoutInput = {
        "orderId": "A-1",
        "customer": {"id": "c-1", "email": None, "segments": ["vip"]},
        "lines": [
            {
                "sku": "mug",
                "quantity": 2,
                "price": {"amountCents": 1250, "currency": "EUR"},
                "category": {"name": "cups", "parent": {"name": "kitchen"}},
            }
        ],
        "payment": {"method": "card", "token": "tok"},
        "notes": {"gift": "yes"},
        "headers": {"x-trace-id": "t-1"},
    }
    await run_ping(client, [1, "anything"])
    return await run_checkout(client, order, correlation_id="c-1", request_id="r-1")


async def decide(client: OkraClient, instance_id: str) -> tuple[bool, int]:
    refund = refund_handle(client, instance_id)
    await refund.signal("approve", {"by": "grace"}, signal_id="s-1")
    decided: RefundOutput = await refund.result(timeout_s=5)
    started = await start_refund(client, {"amountCents": 5}, tags={"via": "shim"})
    await started.signal("reject")
    checkout = await start_checkout(client, {"orderId": "A-1", "customer": {"id": "c"},
        "lines": [], "payment": {"method": "card", "token": "t"}})
    placed: CheckoutOutput = await checkout.result()
    anything: Any = await ping_handle(client, started.id).result()
    return decided["approved"] and decided["by"] != "", placed["lines"] + len(str(anything))
"""

WRONG_CALLERS = """\
from __future__ import annotations

from okra_client import OkraClient
from shims.shop_checkout_v2_1_0 import CheckoutInput, CheckoutMoney, checkout_handle, run_checkout
from shims.shop_refund_v1_0_0 import refund_handle

GOOD: CheckoutMoney = {"amountCents": 1, "currency": "EUR"}


async def wrong(client: OkraClient, order: CheckoutInput) -> None:
    bad_currency: CheckoutMoney = {"amountCents": 1, "currency": "GBP"}  # expect-error
    no_amount: CheckoutMoney = {"currency": "EUR"}  # expect-error
    text_amount: CheckoutMoney = {"amountCents": "1", "currency": "EUR"}  # expect-error
    extra: CheckoutMoney = {"amountCents": 1, "currency": "EUR", "tax": 0}  # expect-error
    order["payment"] = {"method": "cash", "token": "t"}  # expect-error
    order["customer"]["segments"] = ["gold"]  # expect-error
    order["lines"][0]["category"] = {"name": "a", "parent": {"name": 1}}  # expect-error
    await run_checkout(client, {"orderId": "A-1"})  # expect-error
    await run_checkout(client, order, retries=3)  # expect-error


async def wrong_handles(client: OkraClient) -> None:
    refund = refund_handle(client, "i-1")
    await refund.signal("aprove")  # expect-error
    await refund.signal("approve")  # expect-error
    await refund.signal("approve", {"by": 1})  # expect-error
    await refund.signal("approve", {"by": "ada", "note": "x"})  # expect-error
    await refund.signal("reject", [1, "any json"])
    decided = await refund.result()
    amount: int = decided["by"]  # expect-error
    print(decided["amount"])  # expect-error
    placed = await checkout_handle(client, "i-2").result()
    order_id: int = placed["orderId"]  # expect-error
    await checkout_handle(client, "i-2").signal("approve")  # expect-error
    print(amount, order_id)
"""


def generate(workflows: Path, out: Path) -> None:
    assert (
        cli_main(["codegen", "--lang", "python", "--workflows", str(workflows), "--out", str(out)])
        == 0
    )


def mypy(project: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """mypy --strict as a user would run it: the shims as source, okra-sidecar installed."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *files],
        cwd=project,
        env={**os.environ, "MYPYPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    generate(WORKFLOWS_DIR, tmp_path / "shims")
    (tmp_path / "caller.py").write_text(CALLER)
    (tmp_path / "wrong.py").write_text(WRONG_CALLERS)
    return tmp_path


def test_generated_modules_are_lint_clean(project: Path) -> None:
    shims = project / "shims"
    assert sorted(p.name for p in shims.iterdir()) == [
        "__init__.py",
        "shop_checkout_v2_1_0.py",
        "shop_ping_v1_0_0.py",
        "shop_refund_v1_0_0.py",
    ]
    for command in (["format", "--check"], ["check", "--select", "E,F,W,I,UP,B,N"]):
        result = subprocess.run(
            [str(BIN / "ruff"), *command, "--line-length", "100", str(shims)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_accepts_right_callers_and_rejects_wrong_ones(project: Path) -> None:
    result = mypy(project, "caller.py", "wrong.py", "shims")
    output = result.stdout + result.stderr
    assert error_lines(output, "caller.py", MYPY_ERROR) == set(), output
    assert error_lines(output, "wrong.py", MYPY_ERROR) == marked_lines(WRONG_CALLERS), output
    assert not error_lines(output, "shims/shop_checkout_v2_1_0.py", MYPY_ERROR), output


def test_a_schema_change_breaks_the_caller(project: Path, tmp_path: Path) -> None:
    assert mypy(project, "caller.py").returncode == 0
    workflows = copy_workflows(tmp_path / "changed")
    rename_order_id(workflows)
    generate(workflows, project / "shims")
    result = mypy(project, "caller.py")
    assert result.returncode == 1
    assert '"orderId"' in result.stdout and '"orderNumber"' in result.stdout, result.stdout
    assert error_lines(result.stdout, "caller.py", MYPY_ERROR), result.stdout


def test_stale_modules_are_removed_and_others_kept(tmp_path: Path) -> None:
    out = tmp_path / "shims"
    generate(WORKFLOWS_DIR, out)
    (out / "mine.py").write_text("KEEP = True\n")
    workflows = copy_workflows(tmp_path / "fewer")
    (workflows / "ping.yaml").unlink()
    generate(workflows, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "__init__.py",
        "mine.py",
        "shop_checkout_v2_1_0.py",
        "shop_refund_v1_0_0.py",
    ]


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"shims_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_generated_helper_runs_the_workflow(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    generate(WORKFLOWS_DIR, tmp_path / "shims")
    shim = load(tmp_path / "shims" / "shop_checkout_v2_1_0.py")
    order = {
        "orderId": "A-9",
        "customer": {"id": "c-1"},
        "lines": [{"sku": "mug", "quantity": 1, "price": {"amountCents": 5, "currency": "USD"}}],
        "payment": {"method": "sepa", "iban": "NL00BANK0123456789"},
    }
    settings = make_settings(redis_url, workflows=WORKFLOWS_DIR)
    async with running_sidecar(settings) as (sidecar, _):
        async with OkraClient(f"127.0.0.1:{sidecar.port}") as client:
            instance_id = await shim.run_checkout(client, order, tags={"via": "shim"})
            done = await client.wait(instance_id)
    assert done.workflow_id == shim.WORKFLOW_ID == "shop.checkout.2.1.0"
    assert done.status is WorkflowStatus.COMPLETED
    assert done.output == {"orderId": "A-9", "lines": 1}


async def test_typed_handles_send_signals_and_return_results(
    tmp_path: Path, redis: Redis, redis_url: str
) -> None:
    generate(WORKFLOWS_DIR, tmp_path / "shims")
    refund = load(tmp_path / "shims" / "shop_refund_v1_0_0.py")
    checkout = load(tmp_path / "shims" / "shop_checkout_v2_1_0.py")
    order = {
        "orderId": "A-7",
        "customer": {"id": "c-1"},
        "lines": [{"sku": "mug", "quantity": 1, "price": {"amountCents": 5, "currency": "USD"}}],
        "payment": {"method": "card", "token": "tok"},
    }
    settings = make_settings(redis_url, workflows=WORKFLOWS_DIR)
    async with running_sidecar(settings) as (sidecar, _):
        async with OkraClient(f"127.0.0.1:{sidecar.port}") as client:
            approved = await refund.start_refund(client, {"amountCents": 500})
            # Well typed but against the declared schema (minLength): the sidecar refuses it.
            with pytest.raises(InputSchemaMismatchError) as refused:
                await approved.signal("approve", {"by": ""})
            assert [v.field for v in refused.value.field_violations] == ["payload.by"]
            await approved.signal("approve", {"by": "grace"})
            rejected = refund.refund_handle(
                client, await refund.run_refund(client, {"amountCents": 9})
            )
            await rejected.signal("reject", {"by": "ada"})
            assert await approved.result(timeout_s=CALL_TIMEOUT_S) == {
                "approved": True,
                "by": "grace",
            }
            assert await rejected.result(timeout_s=CALL_TIMEOUT_S) == {
                "approved": False,
                "by": "ada",
            }
            placed = await checkout.start_checkout(client, order)
            assert await placed.result(timeout_s=CALL_TIMEOUT_S) == {"orderId": "A-7", "lines": 1}
            instance = await client.get_status(approved.id)
    assert instance.workflow_id == refund.WORKFLOW_ID
    assert isinstance(approved, refund.RefundHandle) and approved.id == approved.handle.id
