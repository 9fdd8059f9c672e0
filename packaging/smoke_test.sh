#!/usr/bin/env bash
# Run the built bundle as a new user on an offline machine would: an empty home and data folders,
# no proxy or Python variables, HF_HUB_OFFLINE=1, started outside the source tree. Fails when
# `Folio --help` or `Folio --self-test` (model, answer, index, search) fails.
# Usage: packaging/smoke_test.sh [path to the Folio executable]
set -euo pipefail
cd "$(dirname "$0")/.."
case "$(uname -s)" in
    Darwin) default=dist/Folio.app/Contents/MacOS/Folio ;;
    *) default=dist/Folio/Folio ;;
esac
exe="${1:-$default}"
if [ ! -x "$exe" ]; then
    echo "smoke test: no executable at $exe (run packaging/build.sh first)" >&2
    exit 1
fi
exe="$(cd "$(dirname "$exe")" && pwd)/$(basename "$exe")"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/folio-smoke.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/home"

# env -i: nothing from this shell leaks in (proxies, PYTHONPATH, VIRTUAL_ENV, HF_HOME, ...).
fresh() {
    (cd "$tmp" && env -i PATH=/usr/bin:/bin LANG=C.UTF-8 TMPDIR="$tmp" HOME="$tmp/home" \
        XDG_CACHE_HOME="$tmp/home/.cache" XDG_DATA_HOME="$tmp/home/.local/share" \
        XDG_CONFIG_HOME="$tmp/home/.config" FOLIO_DATA_DIR="$tmp/data" FOLIO_CACHE_DIR="$tmp/cache" \
        HF_HUB_OFFLINE=1 "$exe" "$@")
}

echo "== Folio --help"
if ! help="$(fresh --help 2>&1)"; then
    echo "FAIL  --help exited non-zero:"; echo "$help"; exit 1
fi
case "$help" in
    *--self-test*) echo "ok    --help" ;;
    *) echo "FAIL  --help printed no usage:"; echo "$help"; exit 1 ;;
esac

echo "== Folio --self-test"
start=$(date +%s)
fresh --self-test
echo "smoke test passed in $(( $(date +%s) - start )) s"
