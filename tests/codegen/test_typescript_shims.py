"""TypeScript shims: tsc --strict accepts right callers (with the Node client), rejects wrong
ones, and notices a schema change."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from okra_sidecar.cli import main as cli_main
from tests.clients.node import (
    NODE_DIR,
    SCRIPT_TIMEOUT_S,
    NodeToolchain,
    build_client,
    ensure_node_modules,
    run_node,
    run_tsc,
)
from tests.codegen.support import (
    WORKFLOWS_DIR,
    copy_workflows,
    error_lines,
    marked_lines,
    rename_order_id,
)
from tests.helpers import make_settings, running_sidecar, to_python

TSC_ERROR = r"^{file}\((?P<line>\d+),\d+\): error"
CLIENT = (NODE_DIR / "src" / "client").as_posix()

CALLER = f"""\
import {{ OkraClient }} from "{CLIENT}";
import {{
  CheckoutInput,
  CheckoutOutput,
  checkoutHandle,
  runCheckout,
}} from "./shims/shop_checkout_v2_1_0";
import {{ runPing }} from "./shims/shop_ping_v1_0_0";
import {{ RefundOutput, refundHandle, startRefund }} from "./shims/shop_refund_v1_0_0";

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

export async function decide(client: OkraClient, instanceId: string): Promise<boolean> {{
  const refund = refundHandle(client, instanceId);
  await refund.signal("approve", {{ by: "grace" }}, "s-1");
  const decided: RefundOutput = await refund.result({{ timeoutMs: 5000 }});
  const started = await startRefund(client, {{ amountCents: 5 }}, {{ tags: {{ via: "shim" }} }});
  await started.signal("reject");
  const placed: CheckoutOutput = await checkoutHandle(client, started.id).result();
  return decided.approved && placed.lines > 0;
}}
"""

WRONG_CALLERS = f"""\
import {{ OkraClient }} from "{CLIENT}";
import {{ refundHandle }} from "./shims/shop_refund_v1_0_0";
import {{
  CheckoutInput,
  CheckoutMoney,
  checkoutHandle,
  runCheckout,
}} from "./shims/shop_checkout_v2_1_0";

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

export async function wrongHandles(client: OkraClient): Promise<void> {{
  const refund = refundHandle(client, "i-1");
  await refund.signal("aprove"); // expect-error
  await refund.signal("approve"); // expect-error
  await refund.signal("approve", {{ by: 1 }}); // expect-error
  await refund.signal("approve", {{ by: "ada", note: "x" }}); // expect-error
  await refund.signal("reject", [1, "any json"]);
  const decided = await refund.result();
  const amount: number = decided.by; // expect-error
  console.log(decided.amount); // expect-error
  const placed = await checkoutHandle(client, "i-2").result();
  const orderId: number = placed.orderId; // expect-error
  await checkoutHandle(client, "i-2").signal("approve"); // expect-error
  console.log(amount, orderId);
}}
"""


@pytest.fixture(scope="module")
def node() -> NodeToolchain:
    return ensure_node_modules()


def generate(workflows: Path, out: Path) -> None:
    args = ["codegen", "--lang", "typescript", "--workflows", str(workflows), "--out", str(out)]
    assert cli_main(args) == 0


def tsc(
    node: NodeToolchain, project: Path, *files: str, emit_to: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """tsc --strict on `files`: only a check, or JavaScript written to `emit_to`."""
    types = str(NODE_DIR / "node_modules" / "@types")
    emit = ["--outDir", str(emit_to), "--rootDir", "."] if emit_to else ["--noEmit"]
    options = [*emit, "--strict", "--target", "ES2022", "--module", "commonjs"]
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
    renamed = next(n for n, line in enumerate(CALLER.splitlines(), 1) if 'orderId: "A-1"' in line)
    assert error_lines(result.stdout, "caller.ts", TSC_ERROR) == {renamed}, result.stdout


# Run, not only checked: the typed handle of shop.refund against a real sidecar, with the
# client compiled from clients/node (its declarations type the script, its JavaScript runs).
RUNNER = f"""\
import {{ deepEqual, equal }} from "node:assert/strict";
import {{ OkraClient, OkraError }} from "{(NODE_DIR / "dist" / "src" / "client").as_posix()}";
import {{ RefundOutput, refundHandle, startRefund }} from "./shims/shop_refund_v1_0_0";

async function main(address: string): Promise<void> {{
  const client = new OkraClient(address, {{ timeoutMs: 10_000 }});
  try {{
    const approved = await startRefund(client, {{ amountCents: 500 }}, {{ tags: {{ via: "ts" }} }});
    await approved.signal("approve", {{ by: "grace" }}, "typed-approve");
    const decided: RefundOutput = await approved.result({{ timeoutMs: 30_000 }});
    deepEqual(decided, {{ approved: true, by: "grace" }});

    const rejected = refundHandle(client, await client.run({{
      workflowId: "shop.refund.1.0.0", input: {{ amountCents: 7 }},
    }}));
    // Past the types (as JavaScript callers can be): the sidecar checks the payload too.
    const untyped = rejected.handle;
    let refused: OkraError | undefined;
    try {{
      await untyped.signal("approve", {{ by: "" }});
    }} catch (error) {{
      if (!(error instanceof OkraError)) throw error;
      refused = error;
    }}
    if (refused === undefined) throw new Error("an approve payload with an empty name went in");
    equal(refused.reason, "INPUT_SCHEMA_MISMATCH");
    deepEqual(refused.fieldViolations.map((v) => v.field), ["payload.by"]);
    await rejected.signal("reject", {{ note: "too late" }});
    const no: RefundOutput = await rejected.result({{ timeoutMs: 30_000 }});
    deepEqual(no, {{ approved: false, by: "unknown" }});
    console.log(JSON.stringify({{ ok: true, approved: approved.id, rejected: rejected.id }}));
  }} finally {{
    client.close();
  }}
}}

main(process.argv[2]).catch((error) => {{
  console.error(error);
  process.exit(1);
}});
"""


@pytest.mark.timeout(SCRIPT_TIMEOUT_S + 120)
async def test_generated_typescript_runs_against_a_sidecar(
    node: NodeToolchain, tmp_path: Path, redis_url: str
) -> None:
    build_client(node)
    generate(WORKFLOWS_DIR, tmp_path / "shims")
    (tmp_path / "runner.ts").write_text(RUNNER)
    built = tsc(node, tmp_path, "runner.ts", emit_to=tmp_path / "out")
    assert built.returncode == 0, built.stdout + built.stderr
    settings = make_settings(redis_url, workflows=WORKFLOWS_DIR)
    async with running_sidecar(settings) as (sidecar, stub):
        report = await run_node(node, tmp_path / "out" / "runner.js", f"127.0.0.1:{sidecar.port}")
        # What the generated code did is what the sidecar holds.
        for instance_id, decided in ((report["approved"], True), (report["rejected"], False)):
            done = await stub.GetStatus(pb.GetStatusRequest(instance_id=instance_id))
            assert done.status == pb.WORKFLOW_STATUS_COMPLETED
            assert to_python(done.output)["approved"] is decided
