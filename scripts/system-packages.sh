#!/usr/bin/env bash
# Debian packages some tests use, installed when missing (as root with apt-get; elsewhere a note):
# GDAL's command-line tools (one test checks the exports with ogrinfo) and Chromium (Playwright
# drives /usr/bin/chromium for the map page's browser test). Each test skips, saying why, without them.
set -uo pipefail
need=()
command -v ogrinfo >/dev/null 2>&1 || need+=(gdal-bin)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null 2>&1 \
    || echo "note: could not install ${need[*]}; the tests that need them will skip"
else
  echo "note: ${need[*]} missing (install them with your package manager); the tests that need them will skip"
fi
exit 0
