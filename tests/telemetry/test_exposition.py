"""/metrics on the admin port of a real sidecar, read as Prometheus and OpenMetrics scrapers do."""

from __future__ import annotations

import asyncio
import gzip
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator

import pytest_asyncio
from okra_client.gen.workflow.v1 import workflow_pb2 as pb
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as prometheus_families
from redis.asyncio import Redis

from okra_sidecar.server import Sidecar
from tests.helpers import make_settings, running_sidecar, value, wait_for_status
from tests.telemetry.support import with_telemetry

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
STARTED = "okra_instances_started"


@pytest_asyncio.fixture
async def scraped(redis: Redis, redis_url: str) -> AsyncIterator[tuple[Sidecar, str]]:
    """A sidecar with an admin port that has started and finished one instance."""
    settings = with_telemetry(make_settings(redis_url), admin_listen="127.0.0.1:0")
    async with running_sidecar(settings) as (sidecar, stub):
        reply = await stub.Run(pb.RunRequest(workflow_id="tests.steps.1.0.0", input=value({})))
        await wait_for_status(stub, reply.instance_id, {pb.WORKFLOW_STATUS_COMPLETED})
        assert sidecar.admin is not None
        yield sidecar, f"http://127.0.0.1:{sidecar.admin.port}/metrics"


def fetch(url: str, **headers: str) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return {k.lower(): v for k, v in response.headers.items()}, response.read()


def started_total(families: Iterable[Metric]) -> float:
    for family in families:
        if family.name == STARTED:
            return sum(s.value for s in family.samples if s.name == f"{STARTED}_total")
    raise AssertionError(f"no {STARTED} family")


async def test_prometheus_text_by_default(scraped: tuple[Sidecar, str]) -> None:
    _, url = scraped
    headers, body = await asyncio.to_thread(fetch, url)
    assert headers["content-type"].startswith("text/plain; version=")
    assert "content-encoding" not in headers
    assert started_total(prometheus_families(body.decode())) == 1


async def test_openmetrics_when_asked(scraped: tuple[Sidecar, str]) -> None:
    _, url = scraped
    headers, body = await asyncio.to_thread(fetch, url, Accept=OPENMETRICS)
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families: Iterable[Metric] = openmetrics_families(text)  # type: ignore[no-untyped-call]  # untyped parser
    assert started_total(families) == 1


async def test_gzip_when_accepted(scraped: tuple[Sidecar, str]) -> None:
    _, url = scraped
    headers, body = await asyncio.to_thread(fetch, url, **{"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip"
    assert started_total(prometheus_families(gzip.decompress(body).decode())) == 1


class ThreadNoting:
    """A collector that notes the thread each scrape collects it on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def collect(self) -> Iterator[Metric]:
        self.threads.append(threading.get_ident())
        yield GaugeMetricFamily("okra_test_collected", "collected in a scrape", value=1)


async def test_the_exposition_is_built_off_the_event_loop(scraped: tuple[Sidecar, str]) -> None:
    sidecar, url = scraped
    registry = sidecar.telemetry.registry
    assert registry is not None
    noting = ThreadNoting()
    registry.register(noting)  # which collects once, here, to learn the names
    noting.threads.clear()
    _, body = await asyncio.to_thread(fetch, url)
    assert b"okra_test_collected 1.0" in body
    assert noting.threads and threading.get_ident() not in noting.threads
