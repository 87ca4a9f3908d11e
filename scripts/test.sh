#!/usr/bin/env bash
# Sets everything up and runs the whole test suite against real Kafka, Postgres, SMTP and S3/SES endpoints.
# The dev stack is started if it is not running, and stopped again afterwards if this script started it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
HOME_DIR=${OFFLOAD_TEST_STACK_HOME:-.dev}
# Read the status whole before matching: `| grep -q` closes the pipe early, the writer dies of a broken pipe,
# and under pipefail a running stack then looked stopped (and was stopped at the end).
stack_status=$(offload dev status --home "$HOME_DIR")
if ! grep -q "kafka *running" <<<"$stack_status"; then
  # Stopped again on exit, also when a step (or the start itself, half-way) fails or the run is interrupted.
  trap 'offload dev down --home "$HOME_DIR"' EXIT
  offload dev up --home "$HOME_DIR"
fi
python -m schemas.generate --check
python -m schemas.evolution   # backward compatibility against schemas/baseline/ (schemas/README.md)
.ci/check-compose
ruff check .   # lint: rules in pyproject.toml [tool.ruff]
mypy           # types: strict on the core packages, see pyproject.toml [tool.mypy]
set +e
smoke=0
if [ $# -eq 0 ]; then  # the whole suite: also the service as a user installs it, from its wheel
  KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:19092} \
  DATABASE_URL=${DATABASE_URL:-postgresql://offload@127.0.0.1:15432/offload} .ci/wheel-smoke
  smoke=$?
fi
if [ $# -eq 0 ]; then
  # Unit and integration tests two at a time: each test has its own topics, consumer groups, database schema and
  # mail sink (tests/conftest.py), and most of their time is spent waiting on real processes. The fault suite
  # stops and restarts the broker and Postgres that every test shares, so it runs afterwards, alone.
  # The slowest tests are listed at the end: where to look first when the suite grows slower.
  python -m pytest -q -n "${OFFLOAD_TEST_PROCESSES:-2}" --durations=15 tests/unit tests/integration
  rc=$?
  python -m pytest -q tests/faults
  faults=$?
  [ "$rc" != 0 ] || rc=$faults
else
  python -m pytest -q "$@"
  rc=$?
fi
set -e
[ "$smoke" = 0 ] || { echo "test.sh: the wheel-installed service failed its smoke test (above)"; rc=1; }
# pytest's 5 means "no tests collected": for this project that is a failure, never a pass.
exit "$rc"
