#!/usr/bin/env bash
# Installs the Debian packages the test suite needs when they are missing: PostgreSQL (the
# store's tests start a throwaway server) and Chromium (the browser tests drive it through
# Playwright). Run as root (CI and the project's machines are); elsewhere it prints what to install.
set -euo pipefail
need=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (install them with: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
if [[ " ${need[*]} " == *" postgresql "* ]]; then
    # the tests start their own throwaway clusters: keep the package from creating and starting
    # a system cluster ("main", port 5432) that nothing stops
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/segany-tests.conf
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
