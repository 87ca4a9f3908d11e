"""The certificate store contract shared by the local-disk and S3/R2 adapters, and the object key scheme."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """Where a certificate landed and what it was: enough for the CertificateIssued event."""

    key: str  # e.g. "company-7/job-abc/12345-ABCD-EFGH-JKMN-PQRS.pdf"
    url: str  # presigned GET (cloud) or the service URL (local)
    sha256: str  # hex
    size: int
    backend: str  # "s3" | "r2" | "local"


class StorageUnavailable(Exception):
    """The store cannot be reached (connection refused, DNS, 5xx after retries, auth)."""


class ObjectNotFound(LookupError):
    """``get`` of a key that holds nothing."""


@runtime_checkable
class CertificateStore(Protocol):
    """Stores rendered certificates; ``put`` of the same key and bytes again is harmless (at-least-once)."""

    backend: str

    async def put(self, key: str, data: bytes, *, content_type: str = "application/pdf") -> StoredObject: ...

    async def get(self, key: str) -> bytes: ...

    async def exists(self, key: str) -> bool: ...

    async def check(self) -> None:
        """Raise StorageUnavailable unless the store takes a write now (asked by health while it is lost)."""
        ...


def _segment(value: object, what: str) -> str:
    text = str(value)
    if not _SEGMENT.match(text) or ".." in text:
        raise ValueError(f"unsafe {what} for an object key: {text!r}")
    return text


def object_key(company_id: int | str, job_id: str, userid: int | str, code: str) -> str:
    """``company-<id>/job-<id>/<userid>-<code>.pdf``; each part a plain path segment, else ValueError.

    Unsafe values are refused rather than cleaned up, because cleaning could map two jobs to one key.
    """
    return (
        f"company-{_segment(company_id, 'company id')}/job-{_segment(job_id, 'job id')}/"
        f"{_segment(userid, 'user id')}-{_segment(code, 'certificate code')}.pdf"
    )


def check_key(key: str) -> str:
    """A relative key of safe segments joined by '/', else ValueError (no '..', no absolute, no backslash)."""
    parts = key.split("/")
    if not key or len(key) > 1024 or any(not _SEGMENT.match(p) or ".." in p for p in parts):
        raise ValueError(f"unsafe object key: {key!r}")
    return key
