"""Cost of DKIM signing per message: ours (cryptography/OpenSSL) against dkimpy's sign(), same message and key.

``python -m bench.dkim_sign`` prints one JSON line (ms per message; and the rate with two signing threads,
which shows whether OpenSSL releases the GIL so signing can run beside the event loop).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.email.dkim import SIGNED_HEADERS, DkimSigner
from config.deliverability import DkimKey
from content.email.compose import compose_message
from content.email.templates import RenderedEmail


def main(n: int = 400) -> dict[str, float]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    signer = DkimSigner(DkimKey(domain="example.org", selector="s1", private_key=pem.decode()))
    raw = compose_message(RenderedEmail(subject="Reminder", text="Dear learner,\n" + "please finish. " * 80,
                                        html="<p>" + "please finish. " * 100 + "</p>"),
                          from_address="noreply@example.org", from_name="School", to_address="a@example.org",
                          to_name="A", message_id="<m@example.org>",
                          headers={"List-Unsubscribe": "<https://example.org/u/t>",
                                   "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"})
    started = time.perf_counter()
    for _ in range(n):
        signer.sign(raw)
    ours = (time.perf_counter() - started) / n * 1000
    threads = [threading.Thread(target=lambda: [signer.sign(raw) for _ in range(n // 2)]) for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    two_threads = (time.perf_counter() - started) / n * 1000
    m = max(20, n // 20)
    started = time.perf_counter()
    for _ in range(m):
        dkim.sign(raw, b"s1", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed"),
                  include_headers=[h.encode() for h in SIGNED_HEADERS if h.encode() + b":" in raw.lower()])
    dkimpy = (time.perf_counter() - started) / m * 1000
    figures = {"message_bytes": len(raw), "ours_ms_per_message": round(ours, 3),
               "ours_two_threads_ms_per_message": round(two_threads, 3), "dkimpy_ms_per_message": round(dkimpy, 2)}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400, help="messages signed each way")
    main(parser.parse_args().n)
