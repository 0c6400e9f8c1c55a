"""TLS on the gRPC port: credentials reloaded from their files, and the client's identity.

grpc asks the certificate fetcher for a new configuration at every TLS handshake; the fetcher
compares the files' stat with what it loaded last and re-reads them only when they changed.
Connections already open keep the certificate they started with, so a rotation (cert-manager,
SPIRE) drops none of them. A half-written file (cert-manager writes the certificate and the key
one after the other) fails to load and is tried again at the next handshake.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from okra_sidecar.config import TlsSettings

logger = logging.getLogger(__name__)

# Auth context properties grpc sets from a verified client certificate.
SPIFFE_ID = "peer_spiffe_id"
X509_SUBJECT = "x509_subject"

Stamp = tuple[tuple[int, int, int, int], ...]


class TlsConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


def _stamp(files: tuple[tuple[str, Path], ...]) -> Stamp:
    """What tells a changed file apart (a rename or a rewrite), for each of `files`."""
    stamps = []
    for what, path in files:
        try:
            info = os.stat(path)
        except OSError as exc:
            raise TlsConfigError(f"{what} {path}: {exc.strerror or exc}") from exc
        stamps.append((info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns))
    return tuple(stamps)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{what} {path}: {exc.strerror or exc}") from exc


class CertificateFiles:
    """The server's certificate, key and client CA as files, re-read when they change."""

    def __init__(self, settings: TlsSettings) -> None:
        if settings.cert_file is None or settings.key_file is None:
            raise TlsConfigError("TLS needs a certificate file and a key file")
        self._cert = settings.cert_file
        self._key = settings.key_file
        self._ca = settings.client_ca_file
        self._lock = threading.Lock()  # the fetcher runs on grpc's threads
        self._stamp: Stamp = ()
        self._failed: Stamp = ()  # files that did not load: not read again until they change
        self.reloads = 0
        self.initial = self._load()

    @property
    def _files(self) -> tuple[tuple[str, Path], ...]:
        files = (("tlsCertFile", self._cert), ("tlsKeyFile", self._key))
        return files if self._ca is None else (*files, ("tlsClientCaFile", self._ca))

    def _load(self) -> Any:
        """The configuration from the files as they are now; raises TlsConfigError."""
        stamp = _stamp(self._files)
        chain = _read(self._cert, "tlsCertFile")
        key = _read(self._key, "tlsKeyFile")
        try:
            leaf = x509.load_pem_x509_certificates(chain)[0]
            private = load_pem_private_key(key, password=None)
        except ValueError as exc:
            raise TlsConfigError(
                f"tlsCertFile {self._cert} or tlsKeyFile {self._key}: {exc}"
            ) from exc
        # grpc would only fail the handshakes later: refuse a key that is not the certificate's.
        if leaf.public_key() != private.public_key():
            raise TlsConfigError(
                f"tlsKeyFile {self._key} is not the private key of tlsCertFile {self._cert}"
            )
        roots = None
        if self._ca is not None:
            roots = _read(self._ca, "tlsClientCaFile")
            try:
                x509.load_pem_x509_certificates(roots)
            except ValueError as exc:
                raise TlsConfigError(f"tlsClientCaFile {self._ca}: {exc}") from exc
        self._stamp = stamp
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def fetch(self) -> Any:
        """grpc's certificate configuration fetcher: a new configuration, or None to keep it."""
        with self._lock:
            stamp: Stamp = ()
            try:
                stamp = _stamp(self._files)
                if stamp in (self._stamp, self._failed):
                    return None
                config = self._load()
            except TlsConfigError as exc:
                # Keep serving with the certificate in force; a later change is tried again.
                self._failed = stamp
                logger.warning("TLS files changed but cannot be loaded: %s", exc)
                return None
            self.reloads += 1
            logger.info("TLS certificate reloaded from %s", self._cert)
            return config


def server_credentials(files: CertificateFiles, *, mutual: bool) -> grpc.ServerCredentials:
    """Credentials whose certificate follows `files`; `mutual` requires a client certificate."""
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files.fetch, require_client_authentication=mutual
    )


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The verified client certificate's identity: its SPIFFE ID, else its subject ('' if none)."""
    properties = context.auth_context()
    for name in (SPIFFE_ID, X509_SUBJECT):
        for value in properties.get(name, ()):
            return bytes(value).decode("utf-8", "replace")
    return ""


__all__ = ["CertificateFiles", "TlsConfigError", "peer_identity", "server_credentials"]
