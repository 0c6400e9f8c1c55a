"""TypeScript shims: tsc --strict accepts right callers (with the Node client), rejects wrong
ones, and notices a schema change."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from okra_sidecar.cli import main as cli_main
from tests.clients.node import NODE_DIR, NodeToolchain, ensure_node_modules, run_tsc
from tests.codegen.support import (
    WORKFLOWS_DIR,
    copy_workflows,
    error_lines,
    marked_lines,
    rename_order_id,
)

TSC_ERROR = r"^{file}\((?P<line>\d+),\d+\): error"
CLIENT = (NODE_DIR / "src" / "client").as_posix()

CALLER = f"""\
import {{ OkraClient }} from "{CLIENT}";
import {{ CheckoutInput, runCheckout }} from "./shims/shop_checkout_v2_1_0";
import {{ runPing }} from "./shims/shop_ping_v1_0_0";

export async function place(client: OkraClient): Promise<string> {{
  const order: CheckoutInput = {{
    orderId: "A-1",
    customer: {{ id: "c-1", email: null, segments: ["vip"] }},
    lines: [
      {{
        sku: "mug",
        quantity: 2,
        price: {{ amountCents: 1250, currency: "EUR" }},
        category: {{ name: "cups", parent: {{ name: "kitchen" }} }},
      }},
    ],
    payment: {{ method: "card", token: "tok" }},
    notes: {{ gift: "yes" }},
    headers: {{ "x-trace-id": "t-1" }},
  }};
  await runPing(client, [1, "anything"]);
  return runCheckout(client, order, {{ correlationId: "c-1", requestId: "r-1" }});
}}
"""

WRONG_CALLERS = f"""\
import {{ OkraClient }} from "{CLIENT}";
import {{ CheckoutInput, CheckoutMoney, runCheckout }} from "./shims/shop_checkout_v2_1_0";

export async function wrong(client: OkraClient, order: CheckoutInput): Promise<void> {{
  const badCurrency: CheckoutMoney = {{ amountCents: 1, currency: "GBP" }}; // expect-error
  const noAmount: CheckoutMoney = {{ currency: "EUR" }}; // expect-error
  const textAmount: CheckoutMoney = {{ amountCents: "1", currency: "EUR" }}; // expect-error
  const extra: CheckoutMoney = {{ amountCents: 1, currency: "EUR", tax: 0 }}; // expect-error
  order.payment = {{ method: "cash", token: "t" }}; // expect-error
  order.customer.segments = ["gold"]; // expect-error
  order.lines[0].category = {{ name: "a", parent: {{ name: 1 }} }}; // expect-error
  await runCheckout(client, {{ orderId: "A-1" }}); // expect-error
  await runCheckout({{}}, order); // expect-error
  console.log(badCurrency, noAmount, textAmount, extra);
}}
"""


@pytest.fixture(scope="module")
def node() -> NodeToolchain:
    return ensure_node_modules()


def generate(workflows: Path, out: Path) -> None:
    args = ["codegen", "--lang", "typescript", "--workflows", str(workflows), "--out", str(out)]
    assert cli_main(args) == 0


def tsc(node: NodeToolchain, project: Path, *files: str) -> subprocess.CompletedProcess[str]:
    types = str(NODE_DIR / "node_modules" / "@types")
    options = ["--noEmit", "--strict", "--target", "ES2022", "--module", "commonjs"]
    options += ["--moduleResolution", "node", "--typeRoots", types, "--types", "node"]
    options += ["--skipLibCheck"]
    return run_tsc(node, *options, *files, cwd=project)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    generate(WORKFLOWS_DIR, tmp_path / "shims")
    (tmp_path / "caller.ts").write_text(CALLER)
    (tmp_path / "wrong.ts").write_text(WRONG_CALLERS)
    return tmp_path


def test_tsc_checks_callers_and_notices_a_schema_change(
    node: NodeToolchain, project: Path, tmp_path: Path
) -> None:
    # One test, to pay for tsc's start-up twice rather than four times.
    result = tsc(node, project, "caller.ts", "wrong.ts")
    output = result.stdout + result.stderr
    assert error_lines(output, "caller.ts", TSC_ERROR) == set(), output
    assert error_lines(output, "wrong.ts", TSC_ERROR) == marked_lines(WRONG_CALLERS), output
    assert "shims/" not in output, output

    workflows = copy_workflows(tmp_path / "changed")
    rename_order_id(workflows)
    generate(workflows, project / "shims")
    result = tsc(node, project, "caller.ts")
    assert result.returncode != 0
    assert "'orderId' does not exist in type 'CheckoutInput'" in result.stdout, result.stdout
    assert error_lines(result.stdout, "caller.ts", TSC_ERROR) == {7}, result.stdout
