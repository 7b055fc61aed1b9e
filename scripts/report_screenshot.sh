#!/usr/bin/env bash
# Render the HTML report of one or more runs in headless Chromium and save a screenshot (docs/report.png was
# made this way):  scripts/report_screenshot.sh docs/report.png runs/00000-... runs/00001-...
set -euo pipefail
out=${1:?usage: $0 OUT.png RUN_DIR [RUN_DIR...]}
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scs-gan report "$@" --out "$tmp/report.html"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$tmp/profile" \
    --screenshot="$out" --window-size=1200,2400 "file://$tmp/report.html" 2>/dev/null
echo "wrote $out"
