"""A test RSA key for DKIM, its DNS record, and dkimpy's verification against that record (not our code)."""

from __future__ import annotations

import functools
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.email.dkim import public_key_b64


@functools.lru_cache(maxsize=2)
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pem_of(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(pem_of(key))
    path.chmod(0o600)
    return path


def txt_record(key: rsa.RSAPrivateKey) -> str:
    return f"v=DKIM1; k=rsa; p={public_key_b64(key)}"


def dkimpy_verify(raw: bytes, *, name: str, key: rsa.RSAPrivateKey) -> bool:
    """dkimpy's verdict, with DNS answered by the test: only ``name`` has a record, ``key``'s public half."""
    def dnsfunc(queried: bytes | str, timeout: int = 5) -> bytes | None:
        asked = queried.decode() if isinstance(queried, bytes) else queried
        return txt_record(key).encode() if asked.rstrip(".") == name else None

    return bool(dkim.verify(raw, dnsfunc=dnsfunc))
