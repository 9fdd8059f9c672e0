#!/usr/bin/env bash
# `make package`: build the one-folder Folio app with PyInstaller, then smoke-test it.
# Output: dist/Folio/ (dist/Folio.app too on macOS); PyInstaller's work files: build/pyinstaller/.
# PyInstaller builds for the platform it runs on: run this on Linux or macOS, build.ps1 on Windows.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

if ! "$PYTHON" -c "import PyInstaller" 2>/dev/null; then
    echo "installing PyInstaller into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    "$PYTHON" -m pip install --quiet "pyinstaller==6.*"
fi

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/folio.spec
echo "built dist/Folio in $(( $(date +%s) - start )) s: $(du -sh dist/Folio | cut -f1)"

packaging/smoke_test.sh
