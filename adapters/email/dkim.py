"""DKIM signatures (RFC 6376: rsa-sha256, relaxed/relaxed) on the messages the SMTP route sends.

Written here on top of ``cryptography`` rather than with dkimpy's ``sign()``: dkimpy does its RSA arithmetic in
pure Python, 18 ms per message on these machines, where OpenSSL through ``cryptography`` takes 0.5 ms and
releases the GIL, so a batch's signing runs in a thread beside the event loop. dkimpy stays the independent
verifier in the tests (tests/integration/test_dkim.py). The key never leaves this object: no event, log line or
projection sees it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from adapters.email.base import EmailProvider, OnEachResult, OutgoingEmail, SendResult
from config.deliverability import ANY_COMPANY, DkimKey

log = logging.getLogger(__name__)

# Signed when present, in this order (RFC 6376 §5.4.1, and RFC 8058 §4: both List-Unsubscribe headers must be
# covered for one-click unsubscribe to be honoured).
SIGNED_HEADERS = ("from", "to", "subject", "date", "message-id", "reply-to", "mime-version", "content-type",
                  "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post", "list-id")
_SIGNED = tuple(name.encode() for name in SIGNED_HEADERS)
_WSP_RUN = re.compile(rb"[ \t]+")
_FOLD = re.compile(rb"\r\n(?=[ \t])")


class DkimKeyError(Exception):
    """A configured key that cannot be used (unreadable file, not an RSA private key, too short)."""


def load_private_key(key: DkimKey) -> rsa.RSAPrivateKey:
    """The RSA key of a DkimKey, or DkimKeyError saying which key and why (never the key itself)."""
    where = f"DKIM key {key.selector}._domainkey.{key.domain}"
    try:
        pem = key.key_file.read_bytes() if key.key_file is not None else \
            key.private_key.get_secret_value().encode()  # type: ignore[union-attr]
    except OSError as exc:
        raise DkimKeyError(f"{where}: cannot read {key.key_file}: {exc.strerror or exc}") from None
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimKeyError(f"{where}: not an unencrypted PEM private key ({type(exc).__name__})") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise DkimKeyError(f"{where}: rsa-sha256 needs an RSA key, not {type(loaded).__name__}")
    if loaded.key_size < 1024:
        raise DkimKeyError(f"{where}: {loaded.key_size}-bit keys are refused by receivers (use 2048)")
    return loaded


def public_key_b64(private_key: rsa.RSAPrivateKey) -> str:
    """The ``p=`` value of the DNS TXT record that publishes this key."""
    der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 §3.4.2: lower-case name, unfolded value, runs of WSP as one space, no WSP at the ends."""
    value = _WSP_RUN.sub(b" ", _FOLD.sub(b"", value)).strip(b" \t\r\n")
    return name.strip().lower() + b":" + value + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4: WSP runs as one space, none at line ends, no empty lines at the end."""
    lines = [_WSP_RUN.sub(b" ", line).rstrip(b" ") for line in body.split(b"\r\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def split_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The header fields (name, value with its folding) in order, and the body."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, body = raw.removesuffix(b"\r\n"), b""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields, body


class DkimSigner:
    """Signs composed messages for one domain and selector."""

    def __init__(self, key: DkimKey, private_key: rsa.RSAPrivateKey | None = None) -> None:
        self.domain, self.selector = key.domain, key.selector
        self._key = private_key or load_private_key(key)

    def __repr__(self) -> str:  # no key material, ever
        return f"DkimSigner(d={self.domain}, s={self.selector})"

    def sign(self, raw: bytes, *, now: float | None = None) -> bytes:
        """``raw`` with a DKIM-Signature header in front, covering the SIGNED_HEADERS present."""
        fields, body = split_message(raw)
        by_name: dict[bytes, list[bytes]] = {}
        for name, value in fields:
            by_name.setdefault(name.strip().lower(), []).append(value)
        signed: list[bytes] = []
        canonical = bytearray()
        for wanted in _SIGNED:
            for value in reversed(by_name.get(wanted, [])):  # several instances: bottom-up (§5.4.2)
                signed.append(wanted)
                canonical += relaxed_header(wanted, value)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        tags = (b"v=1; a=rsa-sha256; c=relaxed/relaxed; d=" + self.domain.encode() + b"; s=" + self.selector.encode()
                + b"; t=" + str(int(now if now is not None else time.time())).encode()
                + b"; h=" + b":".join(signed) + b"; bh=" + body_hash + b"; b=")
        canonical += relaxed_header(b"DKIM-Signature", tags).removesuffix(b"\r\n")
        signature = base64.b64encode(self._key.sign(bytes(canonical), padding.PKCS1v15(), hashes.SHA256()))
        folded = b"\r\n\t".join(signature[i:i + 72] for i in range(0, len(signature), 72))
        header = b"DKIM-Signature: " + tags.replace(b"; h=", b";\r\n\th=").replace(b"; bh=", b";\r\n\tbh=") \
            + b"\r\n\t" + folded + b"\r\n"
        return header + raw


class DkimSigningProvider:
    """An email provider whose messages leave signed: wraps the SMTP relay for one company's batches.

    A batch's messages are signed in one worker thread (OpenSSL releases the GIL), so the event loop keeps
    serving the SMTP sessions while RSA runs.
    """

    def __init__(self, inner: EmailProvider, signer: DkimSigner) -> None:
        self.inner = inner
        self.signer = signer
        self.name = inner.name
        self.max_batch = inner.max_batch

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    def sign_all(self, messages: Sequence[OutgoingEmail]) -> list[OutgoingEmail]:
        return [dataclasses.replace(m, raw=self.signer.sign(m.raw)) for m in messages]

    async def send_batch(self, messages: Sequence[OutgoingEmail],
                         on_result: OnEachResult | None = None) -> list[SendResult]:
        signed = await asyncio.to_thread(self.sign_all, messages)
        return await self.inner.send_batch(signed, on_result)


class DkimSigners:
    """The worker's signers, one per configured key, loaded once at start.

    Production refuses to start with a key it cannot use (DkimKeyError names the key and the reason); elsewhere
    that company's mail goes out unsigned and the problem is logged and kept in ``problems``.
    """

    def __init__(self, keys: dict[str, DkimKey], *, strict: bool) -> None:
        self.signers: dict[str, DkimSigner] = {}
        self.problems: dict[str, str] = {}
        for company, key in keys.items():
            try:
                self.signers[company] = DkimSigner(key)
            except DkimKeyError as exc:
                if strict:
                    raise
                log.error("%s; mail of company %s goes out unsigned", exc, company)
                self.problems[company] = str(exc)

    def for_company(self, company_id: int) -> DkimSigner | None:
        return self.signers.get(str(company_id)) or self.signers.get(ANY_COMPANY)

    def misaligned(self, mail_from: str) -> list[str]:
        """Keys whose d= is neither the From address's domain nor a parent of it: DMARC fails on them."""
        domain = mail_from.rpartition("@")[2].lower()
        return [f"{s.selector}._domainkey.{s.domain}" for s in self.signers.values()
                if domain != s.domain.lower() and not domain.endswith("." + s.domain.lower())]
