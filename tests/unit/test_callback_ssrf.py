"""Issue 11 finding 8: the callback SSRF check over IP literal forms.

Example tests name the addresses the review (and this follow-up) found let through; property tests state the
rule over every spelling of an address: an IPv6 address that carries an IPv4 address is judged exactly as that
IPv4 address, and no other IPv6 address outside global unicast is ever called back.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.callback_urls import check_callback_url, non_public

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def _decision(url: str) -> str:
    refusal = asyncio.run(check_callback_url(url, allow_private=False))
    return "allowed" if refusal is None else refusal.code


@pytest.mark.parametrize("url", [
    # the review's four: IPv4-compatible 127.0.0.1, NAT64 and 6to4 of 169.254.169.254, site-local
    "http://[::7f00:1]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:a9fe:a9fe::]/", "http://[fec0::1]/",
    # RFC 8215 local-use NAT64: with a /48 prefix (RFC 6052 layout) this is 169.254.169.254, and the last 32 bits,
    # which the check used to read, hold a public address.
    "http://[64:ff9b:1:a9fe:a9:fe00:5db8:d70e]/",
    "http://[64:ff9b:1::5db8:d70e]/",  # which IPv4 address it reaches depends on the operator's prefix length
    "http://[3fff::1]/",  # documentation (RFC 9637); Python 3.11's ipaddress calls it global
    "http://[2620:4f:8000::1]/",  # AS112 DNS sinks
    "http://[::ffff:0:a9fe:a9fe]/",  # IPv4-translated (SIIT) form of 169.254.169.254
    "http://[fe80::1%25eth0]/",  # link-local with a zone
    "http://192.88.99.1/",  # the deprecated 6to4 relay anycast
])
def test_ipv6_and_special_ipv4_literals_that_reach_no_public_host_are_refused(url):
    assert _decision(url) == "callback_url_forbidden"


@pytest.mark.parametrize("url", ["https://[64:ff9b::5db8:d70e]/cb", "https://[2002:5db8:d70e::1]/cb",
                                 "https://[::ffff:93.184.215.14]/cb", "https://[2606:4700::1111]/",
                                 "https://93.184.215.14/cb"])
def test_public_addresses_in_every_form_are_still_allowed(url):
    assert _decision(url) == "allowed"


def _ipv6_forms(v4: V4) -> list[V6]:
    """Each IPv6 address a packet to ``v4`` can be sent to: mapped, NAT64 well-known prefix, 6to4, Teredo."""
    n = int(v4)
    teredo_server = int(V4("65.54.227.120"))
    return [
        V6((0xFFFF << 32) | n),
        V6((0x0064FF9B << 96) | n),
        V6((0x2002 << 112) | (n << 80) | 1),
        # Teredo: 2001:0000:<server>:<flags>:<port>:<client inverted>
        V6((0x20010000 << 96) | (teredo_server << 64) | (0x8000 << 48) | (0x63BF << 32) | (~n & 0xFFFFFFFF)),
    ]


def _spellings(address: V6) -> list[str]:
    """Ways to write one IPv6 literal in a URL: compressed, exploded, upper case, dotted-quad tail."""
    tail = V4(int(address) & 0xFFFFFFFF)
    head = address.exploded.rsplit(":", 2)[0]
    return [address.compressed, address.exploded, address.exploded.upper(), f"{head}:{tail}"]


any_v4 = st.ip_addresses(v=4)
inside_v4 = st.one_of(*(st.ip_addresses(v=4, network=n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4")))


@settings(max_examples=150, deadline=None)
@given(v4=st.one_of(any_v4, inside_v4))
def test_property_an_ipv6_form_of_an_ipv4_address_is_judged_exactly_as_that_address(v4):
    expected = "callback_url_forbidden" if non_public(v4) else "allowed"
    assert _decision(f"https://{v4}/cb") == expected
    for form in _ipv6_forms(v4):
        assert non_public(form) == non_public(v4), (form, v4)
        for spelling in _spellings(form):
            assert _decision(f"https://[{spelling}]/cb") == expected, (spelling, v4)


@settings(max_examples=300, deadline=None)
@given(v4=any_v4, prefix_bits=st.integers(min_value=0, max_value=2**80 - 1))
def test_property_ipv4_compatible_and_local_use_nat64_addresses_are_always_refused(v4, prefix_bits):
    compatible = V6(int(v4))
    local_use = V6((0x0064FF9B0001 << 80) | prefix_bits)  # any layout under 64:ff9b:1::/48
    for address in (compatible, local_use):
        assert non_public(address), address
        for spelling in _spellings(address):
            assert _decision(f"http://[{spelling}]/") == "callback_url_forbidden", spelling


outside_global_unicast = st.integers(min_value=0, max_value=2**128 - 1).map(V6).filter(
    lambda a: not (0x2000 <= int(a) >> 112 <= 0x3FFF) and a.ipv4_mapped is None
    and a not in ipaddress.IPv6Network("64:ff9b::/96"))


@settings(max_examples=500, deadline=None)
@given(address=st.one_of(outside_global_unicast,
                         *(st.ip_addresses(v=6, network=n) for n in (
                             "fec0::/10", "fe80::/10", "fc00::/7", "ff00::/8", "::/128", "::1/128", "100::/64",
                             "2001:db8::/32", "3fff::/20", "2001:2::/48", "2001:10::/28"))))
def test_property_no_ipv6_address_outside_global_unicast_is_called_back(address):
    assert non_public(address), address
    assert _decision(f"http://[{address.compressed}]/") == "callback_url_forbidden"


def _inet_aton_forms(v4: V4) -> list[str]:
    """The shorthand spellings C's inet_aton (and so getaddrinfo) reads as ``v4``: a.b.c.d, a.b.c16, a.b24,
    one 32-bit number, each part in decimal, hex or octal."""
    a, b, c, d = v4.packed
    n = int(v4)
    return [str(v4), f"{a}.{b}.{(c << 8) | d}", f"{a}.{(b << 16) | (c << 8) | d}", str(n), hex(n), f"0{n:o}",
            ".".join(hex(o) for o in (a, b, c, d)), ".".join(f"0{o:o}" for o in (a, b, c, d))]


@settings(max_examples=100, deadline=None)
@given(v4=inside_v4)
def test_property_shorthand_ipv4_spellings_of_an_inside_address_never_pass(v4):
    for host in _inet_aton_forms(v4):
        # Literal or read numerically by the resolver (no DNS query): never let through.
        assert _decision(f"http://{host}/cb") in ("callback_url_forbidden", "callback_url_unresolvable"), host
