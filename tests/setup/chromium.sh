#!/usr/bin/env bash
# Headless Chromium + chromedriver from Debian for the web chat's browser test (tests/distributed/test_serve_page.py).
# fonts-wqy-zenhei: a CJK font, so the screenshots show the Chinese text instead of empty boxes.
# Idempotent: does nothing when both are installed. Nothing downloads a browser at test time.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ] && fc-list :lang=zh | grep -q .; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei >/dev/null
