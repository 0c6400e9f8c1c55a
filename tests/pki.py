"""Certificates for TLS tests, made with the openssl command line as an operator would."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SPIFFE_ID = "spiffe://example.org/ns/prod/sa/billing"
DAYS = "2"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA that issues server and client certificates into its folder."""

    folder: Path
    name: str

    @property
    def cert(self) -> Path:
        return self.folder / f"{self.name}.crt"

    @classmethod
    def create(cls, folder: Path, name: str = "ca") -> Authority:
        folder.mkdir(parents=True, exist_ok=True)
        _openssl(
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", DAYS),
            *("-subj", f"/CN={name} test CA"),
            cwd=folder,
        )
        return cls(folder, name)

    def issue(self, name: str, *, subject: str, extensions: str) -> Pair:
        """A certificate `name.crt` for `subject` with the given X.509v3 extension lines."""
        (self.folder / f"{name}.ext").write_text(extensions)
        _openssl(
            *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject),
            cwd=self.folder,
        )
        _openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", self.cert.name),
            *("-CAkey", f"{self.name}.key", "-CAcreateserial", "-out", f"{name}.crt"),
            *("-days", DAYS, "-extfile", f"{name}.ext"),
            cwd=self.folder,
        )
        return Pair(self.folder / f"{name}.crt", self.folder / f"{name}.key")

    def server(self, name: str = "server") -> Pair:
        """A server certificate for localhost and 127.0.0.1."""
        return self.issue(
            name,
            subject="/CN=localhost",
            extensions="subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )

    def spiffe_client(self, name: str = "billing", spiffe_id: str = SPIFFE_ID) -> Pair:
        """A client certificate whose URI SAN is a SPIFFE ID."""
        return self.issue(
            name,
            subject=f"/O=acme/CN={name}",
            extensions=f"subjectAltName=URI:{spiffe_id}\nextendedKeyUsage=clientAuth\n",
        )

    def plain_client(self, name: str) -> Pair:
        """A client certificate with a subject and no URI SAN."""
        return self.issue(
            name, subject=f"/O=acme/CN={name}", extensions="extendedKeyUsage=clientAuth\n"
        )
