#!/bin/sh
# Install Debian's chromium (for the browser test of the HTML report) when no Chromium is
# found, we are root and apt works. Anything else is skipped quietly: the browser test then
# skips with its reason (CI sets SANITAS_REQUIRE_BROWSER=1, which turns that skip into a failure).
for b in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$b" >/dev/null 2>&1 && exit 0
done
[ -n "${SANITAS_CHROMIUM:-}" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; then
        echo "installed chromium (Debian package) for the browser test"
    else
        echo "could not install chromium: the browser test will be skipped" >&2
    fi
fi
exit 0
