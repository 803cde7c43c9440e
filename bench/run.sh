#!/usr/bin/env bash
# The whole benchmark, from a clone, in one command: installs what it needs
# (the project, sse-starlette and uvicorn, Debian's nchan module), then runs
# every server and scenario and writes docs/benchmarks.rst and its plots.
# Arguments go to `python -m bench.run` (--quick, --only NAMES, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]' 2>&1 | grep -v '^WARNING: Location' || true
if [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libnginx-mod-nchan >/dev/null
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed to pin server and client" >&2; exit 1; }
exec .venv/bin/python -m bench.run "$@"
