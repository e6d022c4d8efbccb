#!/usr/bin/env bash
# Make sure redis-server and redis-cli are installed (Debian's package).
# The tests start their own servers on free ports and stop them; nothing here
# starts one.
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools
  # Debian's package may start a system service; the tests never use it.
else
  echo "redis-server is missing: install Debian's redis-server package (as root)" >&2
  exit 1
fi
