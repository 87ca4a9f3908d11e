"""Shared-secret signing keys, as ``OFFLOAD_API_KEYS`` and ``OFFLOAD_CALLBACK_KEYS`` list them by key id."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

API_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ApiKey(BaseModel):
    """One signing key: the shared secret and the company it speaks for (None: an admin key, every company).

    ``company_id`` must be given, ``null`` included: a key that forgot it must not quietly become an admin key
    that sees every company.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: SecretStr = Field(min_length=16)
    company_id: int | None = Field(ge=0, description="the key's company; null (explicitly) for an admin key")

    @model_validator(mode="before")
    @classmethod
    def _company_id_given(cls, data: Any) -> Any:
        # Said in words of its own: pydantic's "Field required" does not tell an operator what null would mean.
        if isinstance(data, dict) and "company_id" not in data:
            raise ValueError("company_id is required: the id of the company this key speaks for, or null for an "
                             "admin key that speaks for every company")
        return data
