#!/usr/bin/env bash
# Debian's Chromium for the browser test (Playwright drives it at /usr/bin/chromium; `playwright install`
# downloads are not used). Idempotent: installs only when /usr/bin/chromium is missing, and says what it did.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "install-browser: /usr/bin/chromium already installed ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown')); nothing to do"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-browser: /usr/bin/chromium is missing; run as root, or: sudo apt-get install -y chromium" >&2
  exit 1
fi
echo "install-browser: /usr/bin/chromium is missing; installing Debian's chromium (apt-get)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
