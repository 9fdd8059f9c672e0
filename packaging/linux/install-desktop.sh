#!/usr/bin/env bash
# `make install-desktop`: put Folio in the desktop's application menu for this user (no root).
# Installs folio.desktop into $XDG_DATA_HOME/applications and the icon into the hicolor theme
# there (scalable SVG and 256 px PNG). Exec= runs the built bundle (dist/Folio/Folio) when there
# is one, else the venv's `folio`. `--uninstall` removes all three files again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
apps="$data/applications"
icons="$data/icons/hicolor"
installed=("$apps/folio.desktop" "$icons/scalable/apps/folio.svg" "$icons/256x256/apps/folio.png")

refresh_caches() {
    if command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database -q "$apps" || true
    fi
    if command -v gtk-update-icon-cache >/dev/null 2>&1; then
        gtk-update-icon-cache -q -t -f "$icons" || true
    fi
}

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "${installed[@]}"
    refresh_caches
    echo "removed Folio from $data"
    exit 0
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--uninstall]" >&2
    exit 2
fi

if [ -x "$root/dist/Folio/Folio" ]; then
    program="$root/dist/Folio/Folio"
elif [ -x "$root/.venv/bin/folio" ]; then
    program="$root/.venv/bin/folio"
else
    echo "install-desktop: build Folio first (make package, or make install for the venv)" >&2
    exit 1
fi
case "$program" in
    *[\"\`\$\\]*) echo "install-desktop: cannot quote $program in a .desktop file; move the checkout" >&2; exit 1 ;;
esac

mkdir -p "$apps" "$icons/scalable/apps" "$icons/256x256/apps"
# The quoted absolute path survives spaces; TryExec hides the entry if the program goes away.
# Exec= reads % as a field code, so a literal one is written %% there (TryExec takes the path as is).
while IFS= read -r line; do
    case "$line" in
        "Exec=folio "*) printf 'TryExec=%s\nExec="%s" %s\n' "$program" "${program//%/%%}" "${line#Exec=folio }" ;;
        *) printf '%s\n' "$line" ;;
    esac
done < "$here/folio.desktop" > "$apps/folio.desktop"
cp "$here/folio.svg" "$icons/scalable/apps/folio.svg"
cp "$here/folio.png" "$icons/256x256/apps/folio.png"
refresh_caches
echo "installed Folio ($program) into $data"
