"""The pieces behind issue 11's findings 6, 7 and 13 that need no server: callback hosts resolve in threads of
their own, limits count an IPv6 client by its /64, and redaction keeps nothing of a query's values."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from api import public
from security.callback_urls import check_callback_url, open_query, redacted


async def test_a_callback_host_resolves_while_the_default_executor_is_full():
    loop = asyncio.get_running_loop()
    release = threading.Event()
    executor = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(executor)
    blocker = loop.run_in_executor(None, release.wait, 30)
    try:
        refusal = await check_callback_url("https://localhost/cb.php", allow_private=False, resolve_timeout=5)
        # localhost resolved (to loopback, so refused as forbidden) rather than timing out as unresolvable.
        assert refusal is not None and refusal.code == "callback_url_forbidden", refusal
    finally:
        release.set()
        await blocker


def test_limits_count_an_ipv6_client_by_its_64_and_ipv4_by_its_address():
    limit_key = public.limit_key
    assert limit_key("2001:db8:7:1::1") == limit_key("2001:db8:7:1:ffff:ffff:ffff:ffff") == "2001:db8:7:1::/64"
    assert limit_key("2001:db8:7:2::1") != limit_key("2001:db8:7:1::1")
    assert limit_key("198.51.100.7") == "198.51.100.7" != limit_key("198.51.100.8")
    assert limit_key("::ffff:198.51.100.7") == "198.51.100.7"  # IPv4-mapped: the IPv4 client
    assert limit_key("unix socket") == "unix socket"  # not an address: counted as given


def test_redaction_keeps_no_value_of_a_query_even_one_without_a_name():
    assert redacted("https://m.example.org/cb.php?0123TOKEN") == "https://m.example.org/cb.php?[redacted]"
    assert redacted("https://m.example.org/cb.php?wstoken=T0K3N&x") == \
        "https://m.example.org/cb.php?wstoken=[redacted]&[redacted]"
    once = redacted("https://m.example.org/cb.php?wstoken=T0K3N#frag")
    assert redacted(once) == once == "https://m.example.org/cb.php?wstoken=[redacted]"  # idempotent
    assert redacted("https://m.example.org/cb.php") == "https://m.example.org/cb.php"
    assert redacted(None) is None


def test_an_old_event_without_a_sealed_query_is_called_back_at_its_full_url():
    """Events written before the API sealed queries carry the whole URL and no sealed part: it is used as is."""
    full = "https://m.example.org/webservice/rest/server.php?wstoken=T0K3N&wsfunction=f"
    assert open_query(full, None, "job-1", b"k" * 32) == full


def test_a_callback_error_keeps_no_token_even_when_it_quotes_only_a_part_of_the_url():
    from security import callback_urls

    query = "wstoken=abc%2Fdef0123&wsfunction=local_offload_callback"
    # The pair order changed and the value percent-decoded: the whole query is nowhere in the text.
    error = "InvalidUrlClientError: https://m.example.org/x?wsfunction=local_offload_callback&wstoken=abc/def0123"
    scrubbed = callback_urls.scrub(error, query)
    assert "abc/def0123" not in scrubbed and "def0123" not in scrubbed, scrubbed
    assert callback_urls.scrub(f"HTTP 404 for ?{query}", query) == "HTTP 404 for ?[redacted]"
    assert callback_urls.scrub("timed out", "") == "timed out"
