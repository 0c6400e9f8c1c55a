"""The warning for a gRPC port open to the network without TLS or required auth."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from okra_sidecar.config import AuthSettings, ServerSettings, Settings, TlsSettings
from okra_sidecar.exposure import exposure_warning, is_loopback
from tests.helpers import make_settings, running_sidecar


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.0.1:50051", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("unix:///run/okra.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.7:50051", False),
        ("okra.internal:50051", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_warns_only_when_the_network_reaches_an_unprotected_port() -> None:
    exposed = Settings(server=ServerSettings(listen="0.0.0.0:50051"))
    warning = exposure_warning(exposed)
    assert warning is not None
    assert "anyone who can reach this port can run, signal and cancel workflows" in warning
    assert "insecure: true" in warning
    assert exposure_warning(Settings()) is None  # 127.0.0.1 by default
    assert exposure_warning(replace(exposed, auth=AuthSettings(mode="required"))) is None
    tls = TlsSettings(cert_file=Path("tls.crt"), key_file=Path("tls.key"))
    assert exposure_warning(replace(exposed, tls=tls)) is None
    meant = replace(exposed, server=replace(exposed.server, insecure=True))
    assert exposure_warning(meant) is None


async def test_the_sidecar_logs_the_warning_at_start(
    redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_url)
    settings = replace(settings, server=replace(settings.server, listen="0.0.0.0:0"))
    with caplog.at_level(logging.WARNING, logger="okra_sidecar.server"):
        async with running_sidecar(settings):
            pass
    assert any("without TLS and without authMode" in r.getMessage() for r in caplog.records)
    caplog.clear()
    quiet = replace(settings, server=replace(settings.server, insecure=True))
    with caplog.at_level(logging.WARNING, logger="okra_sidecar.server"):
        async with running_sidecar(quiet):
            pass
    assert not any("without TLS" in r.getMessage() for r in caplog.records)
