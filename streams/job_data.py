"""A job's template_data and inline content, read from the job request: batches carry only where it lies in the log.

The route agent writes no copy of template_data into the batches: a batch names the (partition, offset) of its
JobRequested in job-requests (kept as long as a retry may need it, docs/retention.md), and the batch agent reads
the data from there. Crash safe without new state: the job request is durable before any batch exists, a retry
run's batches copy the reference, and a worker that restarts simply reads it again. Each worker keeps the last
few jobs' data in memory, so a job of 500 batches is read about once per worker, not once per batch.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from schemas.events import BatchDispatched, InlineContent
from streams.ledger import OutcomeLedger


class JobDataMismatch(LookupError):
    """The referenced record is not this batch's job request: never serve a job with another job's data."""


class JobData:
    def __init__(self, ledger: OutcomeLedger, *, keep: int = 16) -> None:
        self._ledger = ledger
        self._keep = keep
        self._cache: OrderedDict[tuple[int, int], tuple[dict[str, Any], InlineContent | None]] = OrderedDict()

    async def template_data(self, batch: BatchDispatched) -> dict[str, Any]:
        return (await self.parts(batch))[0]

    async def parts(self, batch: BatchDispatched) -> tuple[dict[str, Any], InlineContent | None]:
        """The job's template_data and its inline content (None when it has none)."""
        where = batch.template_data_at
        assert where is not None
        found = self._cache.get(where)
        if found is None:
            value, _headers = await self._ledger.fetch_record("job-requests", *where)
            request = json.loads(value)
            if not isinstance(request, dict) or request.get("job_id") != batch.job_id:
                raise JobDataMismatch(f"job-requests[{where[0]}]@{where[1]} is not the request of job {batch.job_id}")
            data = request.get("template_data", {})  # optional in JobRequested, {} by default there too
            if not isinstance(data, dict):
                raise JobDataMismatch(f"job {batch.job_id}: template_data is not an object")
            raw_content = request.get("content")  # optional in JobRequested, as template_data
            content = InlineContent.model_validate(raw_content) if raw_content is not None else None
            found = (data, content)
            self._cache[where] = found
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(where)
        return found
