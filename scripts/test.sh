#!/usr/bin/env bash
# Sets everything up and runs the whole test suite against real Kafka, Postgres, SMTP and S3/SES endpoints.
# The dev stack is started if it is not running, and stopped again afterwards if this script started it. The whole
# suite also starts a second one for the fault suite (.dev-faults, or OFFLOAD_TEST_FAULTS_HOME) and stops it after.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
HOME_DIR=${OFFLOAD_TEST_STACK_HOME:-.dev}
# Read the status whole before matching: `| grep -q` closes the pipe early, the writer dies of a broken pipe,
# and under pipefail a running stack then looked stopped (and was stopped at the end).
stack_status=$(offload dev status --home "$HOME_DIR")
# The stacks started here are stopped again on exit, also when a step (or a start itself, half-way) fails or the
# run is interrupted.
started_stacks=()
trap 'for home in "${started_stacks[@]}"; do offload dev down --home "$home"; done' EXIT
if ! grep -q "kafka *running" <<<"$stack_status"; then
  started_stacks+=("$HOME_DIR")
  offload dev up --home "$HOME_DIR"
fi
if [ $# -eq 0 ]; then
  # The fault suite stops and restarts the broker and Postgres it runs on. On a stack of its own (other home, other
  # ports: tests/support/fault_stack.py) it runs beside the unit and integration tests instead of after them.
  FAULTS_HOME=${OFFLOAD_TEST_FAULTS_HOME:-.dev-faults}
  started_stacks+=("$FAULTS_HOME")
  faults_env=$(python -m tests.support.fault_stack up "$FAULTS_HOME")
fi
python -m schemas.generate --check
python -m schemas.evolution   # backward compatibility against schemas/baseline/ (schemas/README.md)
.ci/check-compose
ruff check .   # lint: rules in pyproject.toml [tool.ruff]
mypy           # types: strict on the core packages, see pyproject.toml [tool.mypy]
set +e
smoke=0 image_smoke=0
if [ $# -eq 0 ]; then  # the whole suite: also the service as a user installs it, from its wheel
  KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:19092} \
  DATABASE_URL=${DATABASE_URL:-postgresql://offload@127.0.0.1:15432/offload} .ci/wheel-smoke
  smoke=$?
  # and as a user runs it from the Docker image (built here with podman)
  KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:19092} \
  DATABASE_URL=${DATABASE_URL:-postgresql://offload@127.0.0.1:15432/offload} .ci/image-smoke
  image_smoke=$?
fi
if [ $# -eq 0 ]; then
  # The fault suite, one test at a time, on its own stack; its output follows the other tests'.
  faults_log="$FAULTS_HOME/faults.log"
  (while IFS= read -r variable; do export "$variable"; done <<<"$faults_env"  # a path may hold spaces
   python -m pytest -q -p no:cacheprovider --basetemp="$FAULTS_HOME/pytest" tests/faults > "$faults_log" 2>&1) &
  faults_pid=$!
  # Unit and integration tests two at a time: each test has its own topics, consumer groups, database schema and
  # mail sink (tests/conftest.py), and most of their time is spent waiting on real processes.
  # The slowest tests are listed at the end: where to look first when the suite grows slower.
  python -m pytest -q -n "${OFFLOAD_TEST_PROCESSES:-2}" --durations=15 tests/unit tests/integration
  rc=$?
  wait "$faults_pid"
  faults=$?
  echo "---- the fault suite (tests/faults, on the stack in $FAULTS_HOME)"
  cat "$faults_log"
  [ "$rc" != 0 ] || rc=$faults
else
  python -m pytest -q "$@"
  rc=$?
fi
set -e
[ "$smoke" = 0 ] || { echo "test.sh: the wheel-installed service failed its smoke test (above)"; rc=1; }
[ "$image_smoke" = 0 ] || { echo "test.sh: the service from its Docker image failed its smoke test (above)"; rc=1; }
# pytest's 5 means "no tests collected": for this project that is a failure, never a pass.
exit "$rc"
