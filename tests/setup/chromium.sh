#!/usr/bin/env bash
# Headless Chromium + chromedriver from Debian for the web chat's browser test (tests/unit/test_serve_page.py).
# Idempotent: does nothing when both are installed. Nothing downloads a browser at test time.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
