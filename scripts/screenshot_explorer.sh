#!/usr/bin/env bash
# Screenshot the explorer page of the built book in headless Chromium, offline (file://), to check that
# the pre-rendered swap grid and the embedded widget (its JavaScript served from the book) render.
#
#   scripts/screenshot_explorer.sh OUT.png [PAGE.html] [WIDTH,HEIGHT]
#
# PAGE defaults to _build/html/book/generated/60_explore_sound_swap.html. The window is WIDTH x HEIGHT
# (default 1280,12000: tall enough for the whole page, whose live widget sits at the end); the blank
# stretch above the page's footer is cut out afterwards when the project's venv is there.
# Chromium is installed through apt when missing (`apt-get update` only when the lists are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/screenshot_explorer.sh OUT.png [PAGE.html] [WIDTH,HEIGHT]}
page=${2:-_build/html/book/generated/60_explore_sound_swap.html}
size=${3:-1280,12000}
[ -f "$page" ] || { echo "no built page at $page (run \`make html\` first)" >&2; exit 1; }

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then $sudo apt-get update; fi
    $sudo apt-get install -y chromium
    browser=$(command -v chromium)
fi

mkdir -p "$(dirname "$out")"
out=$(realpath -m "$out")
url="file://$(realpath "$page")"
# --virtual-time-budget lets require.js load embed-amd.js and the widget manager render the saved state
# before the shot; no network is needed (the widget JavaScript is under _static/).
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$size" \
    --virtual-time-budget=10000 --screenshot="$out" "$url" 2>/dev/null
[ -s "$out" ] || { echo "chromium wrote no screenshot to $out" >&2; exit 1; }
if [ -x .venv/bin/python ]; then   # cut the blank stretch between the page's end and its footer
    .venv/bin/python - "$out" <<'EOF'
import sys
import numpy as np
from PIL import Image
path = sys.argv[1]
a = np.asarray(Image.open(path).convert("RGB"))
same = np.r_[False, (a[1:] == a[:-1]).all(axis=(1, 2))]         # row identical to the one above
i, n = 0, len(same)
while i < n:
    j = i
    while j < n and same[j]:
        j += 1
    if j - i >= 400:                                              # a long blank run: keep 40 rows of it
        Image.fromarray(np.concatenate([a[:i + 40], a[j:]])).save(path)
        break
    i = j + 1
EOF
fi
echo "[screenshot] $out from $url"
