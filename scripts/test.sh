#!/usr/bin/env bash
# Runs Vigil's tests: sets up what they need, then `cargo test --workspace --locked`.
#
# Usage: scripts/test.sh [CARGO TEST ARGUMENTS...]
#   scripts/test.sh                      everything
#   scripts/test.sh -- --nocapture       arguments are passed on to cargo test
#
# First runs scripts/setup-test-deps.sh (Debian packages, model weights, PostgreSQL), so a
# fresh clone needs nothing else. Environment:
#   CARGO_TARGET_DIR          default ~/.cache/vigil/target, outside the clone, so that
#                             clones share one build cache
#   VIGIL_TEST_DATABASE_URL   PostgreSQL for the sink test; default
#                             postgres://vigil:vigil@127.0.0.1:5432/vigil_test, which the
#                             set-up installs, starts and provisions (when it still does not
#                             accept a session, the variable stays unset and that test is
#                             skipped, with a message)
#   VIGIL_TEST_BOOTSTRAP      host:port of a real Kafka; passed through to the tests
#                             (without it they use the in-memory broker)
#   VIGIL_TEST_SASL_BOOTSTRAP the SASL_PLAINTEXT listener of that cluster (the
#                             `sasl-bootstrap:` line of scripts/kafka.sh up) for
#                             tests/tests/sasl.rs (skipped without it)
#   VIGIL_TEST_KAFKA_DIR      the --dir of that scripts/kafka.sh cluster. With it, a second
#                             pass runs tests/tests/broker_faults.rs (kill -9 of nodes)
#                             after everything else; the first pass hides it from them
#   VIGIL_MODEL_DIR           where scripts/fetch-model.sh puts the weights
set -euo pipefail

SCRIPT_NAME="test.sh"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

case "${1:-}" in
  -h | --help) print_usage "${BASH_SOURCE[0]}"; exit 0 ;;
esac

cd "$here/.."
if [ -d "$HOME/.cargo/bin" ] && [[ ":$PATH:" != *":$HOME/.cargo/bin:"* ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

"$here/setup-test-deps.sh" || {
  say "error: setup failed (summary above); not running the tests"
  exit 1
}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/vigil/target}

if [ -n "${VIGIL_TEST_DATABASE_URL:-}" ]; then
  pg_reachable "$VIGIL_TEST_DATABASE_URL" ||
    say "warning: VIGIL_TEST_DATABASE_URL=$VIGIL_TEST_DATABASE_URL does not accept a session${PG_ERROR:+ ($PG_ERROR)}; the PostgreSQL test will not be able to connect"
elif pg_reachable "$VIGIL_DEFAULT_TEST_DATABASE_URL"; then
  export VIGIL_TEST_DATABASE_URL=$VIGIL_DEFAULT_TEST_DATABASE_URL
else
  say "PostgreSQL at $VIGIL_DEFAULT_TEST_DATABASE_URL is not reachable: the PostgreSQL sink test is SKIPPED"
fi

say "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
say "VIGIL_TEST_DATABASE_URL=${VIGIL_TEST_DATABASE_URL:-(unset: PostgreSQL test skipped)}"
say "VIGIL_TEST_BOOTSTRAP=${VIGIL_TEST_BOOTSTRAP:-(unset: tests use the in-memory broker; real-Kafka-only tests skipped)}"
say "VIGIL_TEST_SASL_BOOTSTRAP=${VIGIL_TEST_SASL_BOOTSTRAP:-(unset: SASL tests skipped)}"
if [ -z "${VIGIL_TEST_KAFKA_DIR:-}" ]; then
  say "running: cargo test --workspace --locked $*"
  exec cargo test --workspace --locked "$@"
fi

# The broker fault tests kill cluster nodes: they run last, so that a node catching up
# after its restart cannot slow the other tests down. In the first pass they skip (no
# VIGIL_TEST_KAFKA_DIR); the second runs only them, with the test binary's arguments
# (those after --) of this call.
say "running: cargo test --workspace --locked $* (broker fault tests in a second pass)"
env -u VIGIL_TEST_KAFKA_DIR cargo test --workspace --locked "$@" || exit
harness_args=()
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--" ]; then
    harness_args=("${@:i}")
    break
  fi
done
say "running: cargo test --workspace --locked --test broker_faults ${harness_args[*]} (VIGIL_TEST_KAFKA_DIR=$VIGIL_TEST_KAFKA_DIR)"
exec cargo test --workspace --locked --test broker_faults "${harness_args[@]}"
