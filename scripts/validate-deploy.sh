#!/usr/bin/env bash
# Checks the deployment files offline; part of the tests (tests/tests/deploy_files.rs).
#
# Usage: scripts/validate-deploy.sh
#
#  0. The Dockerfile through hadolint (its lint rules; no Docker engine needed).
#  1. docker-compose.yml against the Compose specification's JSON schema (check-jsonschema's
#     vendored copy), then Vigil's own rules for it (scripts/check_deploy.py compose).
#  2. ops/ rendered with kustomize (kubectl's built-in one, or a kustomize binary): the
#     base alone and with each component of ops/components/, then all components together;
#     every render against the Kubernetes schemas (kubernetes-validate --strict), then the
#     "restricted" Pod Security level, the probes and ports, and the custom resources that
#     kubernetes-validate has no schema for (scripts/check_deploy.py kubernetes).
# The Python tools live in a virtual environment ($VIGIL_DEPLOY_TOOLS, default
# ~/.cache/vigil/deploy-tools) that scripts/setup-test-deps.sh creates. Exits 0 when every
# check passed, 1 when one failed, 2 when a tool is missing (saying how to get it).
set -euo pipefail

SCRIPT_NAME=validate-deploy
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
no_arguments "${BASH_SOURCE[0]}" "$@"
cd "$here/.."

tools=${VIGIL_DEPLOY_TOOLS:-$HOME/.cache/vigil/deploy-tools}
for tool in hadolint check-jsonschema kubernetes-validate python; do
  if [ ! -x "$tools/bin/$tool" ]; then
    say "missing $tools/bin/$tool: run scripts/setup-test-deps.sh (it creates that environment)"
    exit 2
  fi
done
if command -v kustomize >/dev/null 2>&1; then
  render() { kustomize build "$1"; }
elif command -v kubectl >/dev/null 2>&1; then
  render() { kubectl kustomize "$1"; }
else
  say "needs kustomize, or kubectl (its built-in kustomize), on PATH"
  exit 2
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

say "Dockerfile through hadolint"
"$tools/bin/hadolint" --no-color Dockerfile

say "docker-compose.yml against the Compose specification"
"$tools/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
"$tools/bin/python" "$here/check_deploy.py" compose docker-compose.yml

# A kustomization outside ops/ that adds components to the base (a component may not be
# rendered on its own, and ops/ may not include a directory that includes ops/).
with_components() {
  local name=$1 dir rel c
  shift
  dir="$out/$name.kustomize"
  mkdir -p "$dir"
  rel=$(realpath --relative-to="$dir" ops)
  {
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\ncomponents:\n' "$rel"
    for c in "$@"; do printf '  - %s/components/%s\n' "$rel" "$c"; done
  } >"$dir/kustomization.yaml"
  render "$dir" >"$out/$name.yaml"
}

render ops >"$out/base.yaml"
components=()
for c in ops/components/*/; do
  c=$(basename "$c")
  components+=("$c")
  with_components "$c" "$c"
done
with_components all "${components[@]}"

for f in "$out"/*.yaml; do
  say "$(basename "$f" .yaml): Kubernetes schemas"
  "$tools/bin/kubernetes-validate" --strict --quiet "$f"
done
"$tools/bin/python" "$here/check_deploy.py" kubernetes "$out"/*.yaml
say "all deployment checks passed"
