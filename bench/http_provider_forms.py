"""Per-learner content on SendGrid/Mailgun: one call per batch (substitutions / recipient variables) against
per-call grouping (every learner has their own rendered body, so a group is one learner: one call each).

``python -m bench.http_provider_forms [-n 2000]`` sends the same ``n`` composed messages both ways through the
adapters into the local API servers of the tests (real HTTP on loopback) and prints one JSON line: calls,
request bytes per learner, learners per second. The servers run in this process, so the rates include their
parsing; compare the two forms with each other, not with a real provider.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from adapters.email.mailgun import MailgunProvider
from adapters.email.sendgrid import SendGridProvider
from devtools.provider_servers import MailgunServer, SendGridServer
from tests.support.email import MAIL_FROM, outgoing


async def measure(provider, server, messages, *, per_learner: bool) -> dict:  # type: ignore[no-untyped-def]
    before = len(server.calls)
    started = time.perf_counter()
    if per_learner:
        results = [r for part in await asyncio.gather(*(provider.send_batch([m]) for m in messages)) for r in part]
    else:
        results = [r for start in range(0, len(messages), 200)
                   for r in await provider.send_batch(messages[start:start + 200])]
    seconds = time.perf_counter() - started
    calls = server.calls[before:]
    assert len(results) == len(messages) and all(r.outcome.value == "sent" for r in results)
    return {"calls": len(calls), "request_bytes_per_learner": round(sum(c.size for c in calls) / len(messages)),
            "learners_per_s": round(len(messages) / seconds, 1)}


async def main(n: int) -> dict:
    messages = [outgoing(i) for i in range(n)]
    out: dict = {"n": n, "batch_size": 200}
    with SendGridServer(api_key="k") as sg, MailgunServer(api_key="k", domain="mg.example.org") as mg:
        for name, server, provider in (
            ("sendgrid", sg, SendGridProvider(api_key="k", base_url=sg.base_url, mail_from=MAIL_FROM)),
            ("mailgun", mg, MailgunProvider(api_key="k", domain="mg.example.org", base_url=mg.base_url,
                                            mail_from=MAIL_FROM)),
        ):
            out[f"{name}_one_call_per_batch"] = await measure(provider, server, messages, per_learner=False)
            out[f"{name}_one_call_per_learner"] = await measure(provider, server, messages, per_learner=True)
            await provider.stop()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    print(json.dumps(asyncio.run(main(parser.parse_args().n))))
