"""The stack of the fault suite when ``scripts/test.sh`` runs it beside the unit and integration tests.

The fault suite stops and restarts the broker and Postgres it runs against. On a dev stack of its own (another
home, other ports) it can do so while the other tests run, instead of after them, and never under them.

    python -m tests.support.fault_stack up HOME     # starts it (or reuses it); prints the variables to export
    python -m tests.support.fault_stack down HOME   # stops what it started

Its ports are fixed and below Linux's ephemeral range (32768-60999): a broker the suite restarts must find its port
free again, and a port the OS could hand any outgoing connection meanwhile might not be.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from devtools import devstack

KAFKA_PORT, CONTROLLER_PORT, PG_PORT = 19192, 19193, 15532  # the dev stack's default ports + 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("home", type=Path)
    args = parser.parse_args(argv)
    if args.action == "down":
        devstack.down(args.home, log=lambda *a: None)
        return 0
    # Its tests start mail sinks of their own: the stack's is not needed.
    info = devstack.up(args.home, kafka_port=KAFKA_PORT, controller_port=CONTROLLER_PORT, pg_port=PG_PORT,
                       start_mail_sink=False, log=lambda *a: None)
    print(f"OFFLOAD_TEST_STACK_HOME={info.home}")
    print(f"KAFKA_BOOTSTRAP_SERVERS={info.kafka_bootstrap}")
    print(f"DATABASE_URL={info.database_url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
