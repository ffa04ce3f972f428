"""TLS through the guard: SNI and certificate checks use the URL's host name, not the address."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.egress import build_client
from tests.webhook_receiver import LOOPBACK, Receiver


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls_verifies_the_certificate_against_the_host_name_not_the_checked_address(
    tmp_path: Path,
) -> None:
    cert, key = _certificate(tmp_path, "hooks.test")

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    receiver = Receiver(ssl_certfile=str(cert), ssl_keyfile=str(key))
    await receiver.start()
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        async with build_client(LOOPBACK, resolver=resolver, verify=trust) as client:
            async with client.post(f"https://hooks.test:{receiver.port}/hook", data=b"{}") as response:
                assert response.status == 204
            # Same address, other name: the certificate does not match it, so TLS fails.
            with pytest.raises(aiohttp.ClientConnectorError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
                await client.post(f"https://other.test:{receiver.port}/hook", data=b"{}")
    finally:
        await receiver.stop()
