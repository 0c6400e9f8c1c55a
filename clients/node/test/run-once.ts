/**
 * One `run` without a requestId, for the retry test: usage node dist/test/run-once.js
 * HOST:PORT. Prints a JSON report with the instance id; exits non-zero if the Run failed.
 */
import { OkraClient } from "../src/client";

async function main(): Promise<void> {
  const client = new OkraClient(process.argv[2], { timeoutMs: 10_000 });
  try {
    const instanceId = await client.run({ workflowId: "tests.forever.1.0.0", input: {} });
    console.log(JSON.stringify({ ok: true, instanceId }));
  } finally {
    client.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
