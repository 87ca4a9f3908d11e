"""Cloud provider health (topic ``provider-health``, keyed provider:account:region): a worker's circuit breaker
for one provider account opened or closed."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schemas.events.base import Event


class _ProviderCircuit(Event):
    """A worker's circuit breaker for one cloud provider account changed state."""

    topic: ClassVar[str] = "provider-health"
    provider: str
    account: str = Field(description="a label of the credentials used (never a key id): 'default' or 'key-<hash>'")
    region: str
    worker: str = Field(description="the process whose breaker this is (breakers are per worker process)")

    def subject(self) -> str:
        return f"{self.provider}:{self.account}:{self.region}"


class ProviderCircuitOpened(_ProviderCircuit):
    """Consecutive failures opened the circuit: batches go to the local relay until the cool-down ends."""

    ce_type: ClassVar[str] = "org.manireports.offload.provider.circuit-opened.v1"
    reason: str
    consecutive_failures: int
    cooldown_seconds: float


class ProviderCircuitClosed(_ProviderCircuit):
    """A probe got through: batches use the provider again."""

    ce_type: ClassVar[str] = "org.manireports.offload.provider.circuit-closed.v1"
    reason: str
    open_seconds: float
