"""``python -m api [--host H] [--port P]``: the API process, configured from the environment like the others."""

from __future__ import annotations

import argparse
import logging

from config.load import settings_or_exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("-l", "--loglevel", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_or_exit()  # names the variable and the problem, never a secret's value
    from api.app import run_api

    run_api(settings, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
