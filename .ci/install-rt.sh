#!/usr/bin/env bash
# Install Request Tracker 5 for the end-to-end suite (tests/e2e/test_request_tracker_e2e.py):
# Debian/Ubuntu's request-tracker5 with the SQLite backend and the standalone (plackup) server.
# Idempotent: does nothing when RT is already installed. Quiet unless something fails.
# The tests build their own throwaway database and site config; nothing here is configured for use.
set -euo pipefail

RT_SERVER=/usr/share/request-tracker5/libexec/rt-server
# dbconfig-no-thanks: skip dbconfig-common's database set-up (the tests initialise their own).
PACKAGES=(request-tracker5 rt5-db-sqlite rt5-standalone dbconfig-no-thanks)

installed() {
  local p
  for p in request-tracker5 rt5-db-sqlite; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || return 1
  done
  command -v plackup >/dev/null && command -v rt-setup-database-5 >/dev/null && [ -e "$RT_SERVER" ]
}

if installed; then
  echo "install-rt: Request Tracker 5 already installed"
  exit 0
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then
  SUDO=(sudo)
fi
log=$(mktemp -t install-rt.XXXXXX.log)
start=$(date +%s)
if ! {
  echo "dbconfig-common dbconfig-common/dbconfig-install boolean false" | "${SUDO[@]}" debconf-set-selections &&
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Use-Pty=0 "${PACKAGES[@]}"
} >"$log" 2>&1; then
  echo "install-rt: installing ${PACKAGES[*]} failed; last lines of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
if ! installed; then
  echo "install-rt: packages installed but plackup, rt-setup-database-5 or $RT_SERVER is missing" >&2
  exit 1
fi
rm -f "$log"
echo "install-rt: Request Tracker $(dpkg-query -W -f='${Version}' request-tracker5) installed in $(( $(date +%s) - start ))s"
