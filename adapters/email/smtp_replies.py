"""How the SMTP adapter reads a relay's refusal: about the message (its outcome: a transient or a permanent failure),
about the pace (throttled: no attempt spent), or about this worker (the relay takes nothing from it as it is set
up: its host, its sender, its missing AUTH or TLS; the relay is then unavailable, and no learner's attempt spent).

The texts are those of Postfix (which names the restriction that refused: "Client host rejected", "Sender address
rejected", "Relay access denied"), Exim, Sendmail, Exchange and the hosted relays."""

from __future__ import annotations

import re

from adapters.email.base import Outcome

# Replies that mean "slow down" rather than "this message has a problem" (RFC 5321 + common relays).
_THROTTLE_CODES = frozenset({421, 451, 452, 454})
# Postfix's own rate limits answer "450 4.7.1 Error: too much mail from …" (smtpd_client_message_rate_limit) and
# "… too many recipients/connections from …"; policy servers and hosted relays speak of a rate or say try later.
_THROTTLE_TEXT = re.compile(r"rate|too many|too much|throttl|try again later", re.IGNORECASE)

_AUTH_REQUIRED = 530  # RFC 4954 6: authentication (or, Postfix, STARTTLS) required before MAIL
_TOO_BIG = 552  # to MAIL FROM ... SIZE=n: this message exceeds the relay's size limit (RFC 1870)
# The relay refuses the client, its sender or its greeting, whoever the learner is.
_REFUSES_WORKER = re.compile(
    r"client host (?:\[[^\]]*\] )?(?:rejected|blocked)"  # Postfix smtpd_client_restrictions, an RBL on the host
    r"|sender address rejected"  # Postfix smtpd_sender_restrictions: not owned by the login, domain not found
    r"|sender verify failed"  # Exim "require verify = sender" (in Debian's configuration): the domain does not route
    r"|is in a black list at"  # Exim's dnslists, about the client's address
    r"|helo command rejected"
    r"|authentication required|not authenticated|must issue a starttls|starttls required",
    re.IGNORECASE)
# The relay will not pass mail on to a domain it does not serve, for a client it does not trust (Postfix
# reject_unauth_destination; Exim, Sendmail and Exchange in their words).
_DENIES_RELAYING = re.compile(
    r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited)|unable to relay|not permitted to relay",
    re.IGNORECASE)
_ADDRESS = re.compile(r"<[^<>@\s]*@[^<>\s]*>")


def classify_reply(code: int, text: str) -> Outcome:
    """Outcome of a non-2xx SMTP reply: throttling, a transient (4xx) or a permanent (5xx) failure."""
    if 400 <= code < 500:
        return Outcome.THROTTLED if code in _THROTTLE_CODES or _THROTTLE_TEXT.search(text) else Outcome.RETRY
    if 500 <= code < 600:
        return Outcome.FAILED
    return Outcome.RETRY


def refuses_worker(command: str, code: int, text: str) -> bool:
    """Whether a refusal of ``command`` (``MAIL`` or ``RCPT``) is the relay refusing this worker rather than one
    message: AUTH or TLS required (530), a permanent refusal of MAIL FROM (the sender is the same for every message;
    only "552 too big", for the SIZE it names, is the message's own), or a refusal that names the client host, the
    sender or the greeting, at either command (Postfix delays its client and sender restrictions to RCPT)."""
    if code == _AUTH_REQUIRED:
        return True
    if not 400 <= code < 600:
        return False
    if command == "MAIL" and code >= 500 and code != _TOO_BIG:
        return True
    return command in ("MAIL", "RCPT") and _REFUSES_WORKER.search(text) is not None


def denies_relaying(command: str, code: int, text: str) -> bool:
    """Whether a refusal of ``command`` says the relay will not pass the message on for this client. About the
    worker when the relay relays for none of a batch's learners; a learner's own when it takes some of them (a
    relay that serves a few domains only)."""
    return command == "RCPT" and 400 <= code < 600 and _DENIES_RELAYING.search(text) is not None


def without_addresses(text: str, *, sender: str) -> str:
    """``text`` with every ``<address>`` in it but the ``sender``'s replaced by ``<…>``: a relay's refusal as health
    and logs show it, naming no learner."""
    kept = f"<{sender}>".lower()
    return _ADDRESS.sub(lambda found: found.group() if found.group().lower() == kept else "<…>", text)
