"""TLS for clients of the sidecar: the CA to trust, and a client certificate for mutual TLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["ClientTls", "open_channel", "open_sync_channel"]


@dataclass(frozen=True)
class ClientTls:
    """How a client dials a sidecar that serves TLS.

    Args:
        ca_file: PEM CA certificates that signed the sidecar's certificate; None trusts the
            system's roots.
        cert_file: PEM client certificate (with its chain) for a sidecar that requires one.
        key_file: PEM private key of `cert_file`.
        server_name: The name to check the sidecar's certificate against, when it differs from
            the host dialled (e.g. dialling 127.0.0.1 for a certificate issued to `okra`).
    """

    ca_file: Path | str | None = None
    cert_file: Path | str | None = None
    key_file: Path | str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key: give cert_file and key_file")

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files, read now."""

        def read(path: Path | str | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )

    def options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def open_channel(target: str, tls: ClientTls | None) -> grpc.aio.Channel:
    """An asyncio channel to `target`: plaintext without `tls`."""
    if tls is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, tls.credentials(), options=tls.options())


def open_sync_channel(target: str, tls: ClientTls | None) -> grpc.Channel:
    """A blocking channel to `target`: plaintext without `tls`."""
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.credentials(), options=tls.options())
