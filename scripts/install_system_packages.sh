#!/usr/bin/env bash
# Install the system packages a purpose needs, when missing.
# Usage: scripts/install_system_packages.sh run|test|test-postgres
#   (idempotent; does nothing when all are present)
#   run   the stack (`make run`, `make bench`): Redis, Mosquitto and the health script's tools
#   test  the suite (`make test`): run's, plus Prometheus/promtool and Debian's chromium
#   test-postgres  test's, plus PostgreSQL's server binaries (`make test DB=postgres`)
set -euo pipefail

profile=${1:-}
# command -> Debian package; first what `run` needs
declare -A wanted=(
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [mosquitto]=mosquitto
  [mosquitto_pub]=mosquitto-clients
  [mosquitto_sub]=mosquitto-clients
  # scripts/health_check_message_bus.sh
  [curl]=curl
  [pgrep]=procps
)
case "$profile" in
  run) ;;
  test|test-postgres)
    # The suite runs a real Prometheus and promtool against deploy/prometheus/, and drives
    # Debian's chromium with Playwright (whose own browser download cannot work here); logrotate
    # rotates logs as deploy/logrotate/ says.
    wanted[prometheus]=prometheus
    wanted[logrotate]=logrotate
    wanted[promtool]=prometheus
    wanted[chromium]=chromium
    if [ "$profile" = test-postgres ]; then
      # The suite starts a throwaway server of its own (tests/postgres.py), never the system's.
      wanted[initdb]=postgresql
      wanted[pg_isready]=postgresql-client
    fi
    ;;
  *)
    echo "Usage: $0 run|test|test-postgres   (run: the stack's packages; test: run's plus the suite's;" >&2
    echo "       test-postgres: test's plus PostgreSQL's server)" >&2
    exit 2
    ;;
esac
if [ "${INSTALL_EXTRA_PACKAGES:-}" != "" ]; then
  for spec in ${INSTALL_EXTRA_PACKAGES}; do wanted[${spec%%=*}]=${spec#*=}; done
fi

# Debian keeps PostgreSQL's server binaries out of PATH, under /usr/lib/postgresql/<major>/bin.
pg_bin=$(printf '%s:' /usr/lib/postgresql/*/bin)
have() { PATH="$PATH:/usr/sbin:/usr/local/sbin:/sbin:$pg_bin" command -v "$1" >/dev/null 2>&1; }

missing=()
for cmd in "${!wanted[@]}"; do
  have "$cmd" || missing+=("${wanted[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "Missing system packages (for '$profile'): ${packages}" >&2
  echo "Install them once with:  sudo apt-get install -y ${packages}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "Missing system packages (for '$profile'): ${packages}(no apt-get here; install them with your package manager)" >&2
  exit 1
fi

echo "Installing system packages (for '$profile'): ${packages}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
# shellcheck disable=SC2086
"${as_root[@]}" apt-get install -y -qq --no-install-recommends ${packages} >/dev/null
# The stack runs its own Redis and Mosquitto on its own ports (and the tests their own
# Prometheus); the distribution's services would hold 6379, 1883 and 9090, so switch them off
# where the package manager started them. (chromium installs no service.)
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  for unit in redis-server mosquitto prometheus; do
    if systemctl is-active --quiet "$unit" 2>/dev/null; then
      echo "Stopping and disabling the system's $unit service (the stack runs its own)."
      "${as_root[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
  done
fi
