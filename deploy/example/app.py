"""An example service beside the sidecar: runs an expense approval and approves it.

It talks to the sidecar over loopback (`OKRA_ADDRESS`, default 127.0.0.1:50051), as a service
in the same pod (or sharing the sidecar's network in docker-compose) does. It runs one round and
exits, or with `--every SECONDS` a round every so often, as a long-running service does.

With `OKRA_TOKEN_SECRET` set (a sidecar with `authMode: required` and the same
`authHs256Secret`), each round sends a short-lived HS256 bearer token for the audience
`OKRA_TOKEN_AUDIENCE` (default `okra-sidecar`), subject `orders`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import jwt
from okra_client import OkraClient, OkraRpcError

WORKFLOW_ID = "examples.approval.1.0.0"
TOKEN_LIFETIME_S = 300


def bearer_metadata() -> list[tuple[str, str]]:
    """The authorization metadata for one round, or none without OKRA_TOKEN_SECRET."""
    secret = os.environ.get("OKRA_TOKEN_SECRET")
    if not secret:
        return []
    claims = {
        "sub": "orders",
        "aud": os.environ.get("OKRA_TOKEN_AUDIENCE", "okra-sidecar"),
        "exp": int(time.time()) + TOKEN_LIFETIME_S,
    }
    return [("authorization", f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}")]


async def one_round(client: OkraClient, round_number: int) -> None:
    workflows = [w.workflow_id for w in await client.list_workflows()]
    print(f"workflows: {', '.join(workflows)}", flush=True)
    instance_id = await client.run(
        WORKFLOW_ID,
        {"requester": "ada", "amount": 120, "purpose": "conference ticket"},
        correlation_id=f"example-{round_number}",
        tags={"source": "example-app"},
    )
    waiting = await client.wait(instance_id, until=["waiting"])
    print(f"{instance_id} is {waiting.status} in {waiting.current_step}", flush=True)
    await client.signal(instance_id, "approve", {"by": "grace", "comment": "ok"})
    done = await client.wait(instance_id)
    print(f"{instance_id} is {done.status}: {done.output}", flush=True)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default=os.environ.get("OKRA_ADDRESS", "127.0.0.1:50051"))
    parser.add_argument("--every", type=float, default=0, help="seconds between rounds")
    args = parser.parse_args(argv)
    round_number = 0
    while True:
        round_number += 1
        try:
            # A client per round: each round gets a fresh token.
            async with OkraClient(args.address, metadata=bearer_metadata()) as client:
                await one_round(client, round_number)
        except (OkraRpcError, TimeoutError) as exc:
            print(f"round {round_number} failed: {exc}", file=sys.stderr, flush=True)
            if not args.every:
                return 1
        if not args.every:
            return 0
        await asyncio.sleep(args.every)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
