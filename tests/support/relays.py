"""What the tests of a real relay (Postfix: tests/support/postfix.py; Exim: tests/support/exim.py) wait for: the
messages it passed on to the sink, and the relay taking the worker's mail again once mended."""

from __future__ import annotations

import asyncio

from adapters.email.smtp import SmtpProvider
from devtools.devmail import DevMailSink, ReceivedMessage
from tests.support.observe import wait_for


def wait_relayed(sink: DevMailSink, learners: int) -> dict[str, list[ReceivedMessage]]:
    """What the sink got from the relay, by recipient, once ``learners`` have theirs (a relay passes mail on in the
    background, after it answered the worker)."""
    wait_for(lambda: len(sink.recipient_counts()) >= learners, timeout=90,
             what=f"{learners} learners' messages relayed")
    return sink.by_recipient()


async def until_mended(provider: SmtpProvider) -> None:
    """Until the relay takes mail from the worker again, as health's watch asks it (``recheck``): a relay applies
    its mended settings to the sessions it opens from then on."""
    async def asked() -> bool:
        try:
            await provider.recheck()
        except ConnectionError:
            return False
        return True

    deadline = asyncio.get_running_loop().time() + 60
    while not await asked():
        assert asyncio.get_running_loop().time() < deadline, "the mended relay still refuses the worker"
        await asyncio.sleep(0.2)
