#!/usr/bin/env bash
# Sets everything up and runs the whole test suite against real Kafka, Postgres, SMTP and S3/SES endpoints.
# The dev stack is started if it is not running, and stopped again afterwards if this script started it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
HOME_DIR=${OFFLOAD_TEST_STACK_HOME:-.dev}
started=0
if ! offload dev status --home "$HOME_DIR" | grep -q "kafka *running"; then
  offload dev up --home "$HOME_DIR"
  started=1
fi
python -m schemas.generate --check
.ci/check-compose
ruff check .   # lint: rules in pyproject.toml [tool.ruff]
mypy           # types: strict on the core packages, see pyproject.toml [tool.mypy]
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$started" = 1 ]; then offload dev down --home "$HOME_DIR"; fi
# pytest's 5 means "no tests collected": for this project that is a failure, never a pass.
exit "$rc"
