"""Local SendGrid and Mailgun API servers: real HTTP on loopback, strict about requests (the tests, the benchmark
and ``offload demo --provider`` use them; in the wheel, so an installed copy can run the demo).

Each checks a call the way the provider's documentation defines it and answers like the provider does:

- SendGrid v3 ``POST /v3/mail/send``: ``Authorization: Bearer <key>`` (else 401 with an ``errors`` list),
  ``Content-Type: application/json``, body ≤ 30 MB (else 413), ``from.email``, 1-1,000 personalizations and
  ≤ 1,000 recipients in all, a subject per personalization or at the top, ``content`` with ``text/plain``
  first and non-empty values, substitutions ≤ 10,000 bytes per personalization, valid addresses (else 400
  naming ``personalizations.N.to.M.email``); accepted: 202, empty body, ``X-Message-Id``. Every answer has
  ``X-RateLimit-Limit/-Remaining/-Reset``.
- Mailgun ``POST /v3/{domain}/messages``: HTTP basic ``api:<key>`` (else 401 ``Forbidden``), a known domain
  (else 404), ``multipart/form-data`` or urlencoded form, ``from``, 1-1,000 ``to``, ``subject``, ``text`` or
  ``html``, ``recipient-variables`` a JSON object, valid addresses (else 400 "to parameter is not a valid
  address"), ≤ 25 MB (else 413); accepted: 200 ``{"id": "<...>", "message": "Queued. Thank you."}``.

Accepted calls are expanded into the message each recipient would get (substitutions / recipient variables
applied) and kept in ``delivered``. ``inject(status, times=…, headers=…)`` makes the next calls fail;
``reject(address)`` refuses an address with 400; ``rate_limit(n, per=1.0)`` answers 429 with
``X-RateLimit-Reset`` once more than ``n`` recipients arrive within ``per`` seconds.
"""

from devtools.provider_servers.base import Call, Delivered, ProviderServer
from devtools.provider_servers.mailgun import MailgunServer
from devtools.provider_servers.sendgrid import SendGridServer

__all__ = ["Call", "Delivered", "MailgunServer", "ProviderServer", "SendGridServer"]
