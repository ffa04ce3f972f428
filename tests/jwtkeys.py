"""Key pairs for the JWT tests: PEM public keys as RELAY_JWT_PUBLIC_KEY takes them."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def public_pem(private: Any) -> str:
    return str(
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(private: Any) -> str:
    return str(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
    )


RSA_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC = public_pem(RSA_PRIVATE)
OTHER_RSA_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_PRIVATE = ec.generate_private_key(ec.SECP256R1())
EC_PUBLIC = public_pem(EC_PRIVATE)
ED_PRIVATE = ed25519.Ed25519PrivateKey.generate()
ED_PUBLIC = public_pem(ED_PRIVATE)
SECRET = "jwt-test-secret-0123456789abcdef0123456789"
