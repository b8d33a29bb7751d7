#!/bin/sh
# Render an hwloop HTML report with headless Chromium to a PNG screenshot, to check by eye that it is legible.
#   tools/render_report.sh report.html [shot.png] [WIDTHxHEIGHT]
# Needs Debian's `chromium` (apt-get install -y chromium); no network is used.
set -eu
html=${1:?usage: tools/render_report.sh REPORT.html [OUT.png] [WIDTHxHEIGHT]}
out=${2:-${html%.html}.png}
size=${3:-1200x6000}
bin=$(command -v chromium || command -v chromium-browser || true)
[ -n "$bin" ] || { echo "render_report.sh: chromium not found (apt-get install -y chromium)" >&2; exit 2; }
abs=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
outabs=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$bin" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --no-first-run --user-data-dir="$profile" --hide-scrollbars \
  --window-size="$(echo "$size" | tr x ,)" --screenshot="$outabs" "file://$abs" >/dev/null 2>&1
[ -s "$outabs" ] || { echo "render_report.sh: no screenshot written" >&2; exit 1; }
echo "$outabs"
