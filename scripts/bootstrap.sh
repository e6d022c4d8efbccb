#!/usr/bin/env bash
# Create the virtualenv and install pairline with its test tools.
# On a bare Debian, `python3 -m venv` needs the pythonX.Y-venv package: install it
# with apt-get when running as root.
set -euo pipefail
python=${1:?python interpreter}
venv=${2:?venv dir}
if [ -z "$python" ] || ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "pairline needs Python 3.11 or newer (set PYTHON=...)" >&2
  exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
  ver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv"
  else
    echo "python${ver}-venv is missing: install it (apt-get install python${ver}-venv)" >&2
    exit 1
  fi
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[dev]'
echo "venv ready: $venv"
