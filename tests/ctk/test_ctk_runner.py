"""The CTK through a real sidecar (python -m okra_sidecar.ctk), and the stand-in it uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from okra_sidecar.ctk.runner import run_features
from okra_sidecar.ctk.stand_in import stand_in_server
from okra_sidecar.executors.hosts import HostMap
from okra_sidecar.executors.http import HttpCaller
from okra_sidecar.executors.openapi import OpenApiCaller

SPEC_DIR_ENV = "OKRA_SPEC_DIR"
DEFAULT_SPEC_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "serverless-workflow"


def spec_dir() -> Path:
    folder = Path(os.environ.get(SPEC_DIR_ENV) or DEFAULT_SPEC_DIR)
    if not (folder / "ctk" / "features").is_dir():
        pytest.skip(f"CTK features not found in {folder}; set {SPEC_DIR_ENV} to run them")
    return folder


async def test_every_scenario_passes(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    results = await run_features(spec_dir(), redis_url=redis_url)
    assert len(results) == 21
    passed = sum(r.passed for r in results)
    with capsys.disabled():
        print(f"\nCTK: {passed} passed, {len(results) - passed} failed")
        for result in results:
            if not result.passed:
                print(f"  {result.scenario_id}: {result.reason}")
    assert passed == len(results), [r for r in results if not r.passed]


async def test_openapi_calls_reach_the_stand_in_petstore() -> None:
    with stand_in_server() as address:
        hosts = HostMap([("petstore.swagger.io", address)])
        http = HttpCaller(hosts=hosts)
        openapi = OpenApiCaller(http=http, hosts=hosts)
        document = {"endpoint": "https://petstore.swagger.io/v2/swagger.json"}
        try:
            pets = await openapi.call(
                {
                    "document": document,
                    "operationId": "findPetsByStatus",
                    "parameters": {"status": "available"},
                }
            )
            assert [pet["name"] for pet in pets] == ["Milou", "Rantanplan"]
            response = await openapi.call(
                {
                    "document": document,
                    "operationId": "getPetById",
                    "parameters": {"petId": 1},
                    "output": "response",
                }
            )
            assert response["statusCode"] == 200
            assert response["request"]["uri"] == "https://petstore.swagger.io/v2/pet/1"
            assert response["content"]["name"] == "Milou"
        finally:
            await openapi.aclose()
            await http.aclose()
