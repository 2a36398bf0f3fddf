#!/usr/bin/env bash
# Make headless Chromium (Debian's package) ready for the map page's browser test.
# Installs it when /usr/bin/chromium is missing (needs root and apt-get). Under CI=true any
# failure here fails the run; elsewhere it warns, and the browser test skips with that reason.
set -u
fail() {
  echo "ensure-chromium: $1" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  exit 0
}
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "ensure-chromium: installing chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null \
      || fail "apt-get install chromium failed"
  else
    fail "chromium is not installed and this user cannot install it"
  fi
fi
/usr/bin/chromium --version >/dev/null 2>&1 || fail "/usr/bin/chromium does not start"
echo "ensure-chromium: $(/usr/bin/chromium --version 2>/dev/null)" >&2
