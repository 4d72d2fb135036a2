#!/usr/bin/env bash
# Message bus health check: one line per component, exit 0 when all are healthy, 1 otherwise.
#
#   scripts/health_check_message_bus.sh          (message-bus-health.timer runs it every 60 s)
#
# Hosts, ports and keys (REDIS_URL, MQTT_HOST, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD, HTTP_HOST,
# HTTP_PORT, MONITORING_API_KEY) are the ones the application resolves from the environment and
# .env (`manage.py shell_settings`). No `set -e`: every check runs and reports, the exit code
# sums up. The checks run at once, so the whole takes about as long as the slowest (the Celery
# ping, a few seconds), however many parts are down.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON="$ROOT/.venv/bin/python"
CELERY="$ROOT/.venv/bin/celery"
CHECK_TIMEOUT=${CHECK_TIMEOUT:-5}

# Every temporary file of this run lives here; the one trap removes it.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# These short-lived checks record no metric worth exporting.
export PROMETHEUS_MULTIPROC_DIR="$work/prometheus"
mkdir "$PROMETHEUS_MULTIPROC_DIR"
export DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-intelliwiz_config.settings}

# Hosts, ports and keys exactly as the application resolves them (environment, .env, defaults).
# Only its standard output is read, and only lines that assign the names asked for.
names=(REDIS_URL_SHOWN REDIS_USERNAME REDIS_PASSWORD MQTT_HOST MQTT_PORT MQTT_USERNAME MQTT_PASSWORD
  HTTP_HOST HTTP_PORT MONITORING_API_KEY)
if ! (cd "$ROOT" && "$PYTHON" manage.py shell_settings "${names[@]}" >"$work/settings" \
    2>"$work/settings.err"); then
  printf '%-4s %-28s %s\n' FAIL settings "cannot load the settings: $(tail -n 1 "$work/settings.err")"
  echo "UNHEALTHY: settings"
  exit 1
fi
pattern="^($(IFS='|'; echo "${names[*]}"))=('[^']*'|[A-Za-z0-9_@%+=:,./-]*)(\"'\"'[^']*')*\$"
if grep -qvE "$pattern" "$work/settings"; then
  printf '%-4s %-28s %s\n' FAIL settings "manage.py shell_settings printed something unexpected"
  echo "UNHEALTHY: settings"
  exit 1
fi
# shellcheck disable=SC1091  # lines checked above: NAME='value' (shell-quoted) for our names
. "$work/settings"
: "${REDIS_URL_SHOWN:?}" "${MQTT_PORT:?}" "${HTTP_PORT:?}"
case $HTTP_HOST in
  0.0.0.0 | "::" | "[::]") HTTP_HOST=127.0.0.1 ;;  # listening everywhere: ask locally
esac
BASE_URL="http://$HTTP_HOST:$HTTP_PORT"

# Secrets never on a command line (ps shows those to every user) nor in the output (the journal):
# - Redis: the URL without credentials (shown masked, as REDIS_URL_SHOWN), the password in
#   REDISCLI_AUTH, an ACL user's name in --user (a name in the URL would be taken as a password);
[ -z "${REDIS_PASSWORD:-}" ] || export REDISCLI_AUTH=$REDIS_PASSWORD
redis_cli=(redis-cli --no-auth-warning -u "${REDIS_URL_SHOWN/'***@'/}"
  ${REDIS_USERNAME:+--user "$REDIS_USERNAME"})
# - the monitoring key: curl reads its header from a private file;
curl_auth=()
if [ -n "${MONITORING_API_KEY:-}" ]; then
  (umask 077 && printf 'Authorization: Bearer %s\n' "$MONITORING_API_KEY" >"$work/auth_header")
  curl_auth=(-H "@$work/auth_header")
fi
# - the MQTT account: mosquitto_sub reads options from $XDG_CONFIG_HOME/mosquitto_sub.
mkdir -m 700 "$work/mqtt"
if [ -n "${MQTT_USERNAME:-}" ]; then
  (umask 077 && printf -- '-u %s\n-P %s\n' "$MQTT_USERNAME" "${MQTT_PASSWORD:-}" \
    >"$work/mqtt/mosquitto_sub")
fi

report() {  # report NAME OK|FAIL DETAIL
  printf '%-4s %-28s %s\n' "$2" "$1" "$3"
}
one_line() { tr '\n' ' ' | sed 's/[[:space:]]*$//' | cut -c1-200; }

# The checks are independent and each may wait up to its timeout: they run at once, each into a
# file of its own, and their lines are printed in this order once all are done.

# Redis: the Celery broker and the bus state.
check_redis() {
  answer=$(timeout "$CHECK_TIMEOUT" "${redis_cli[@]}" ping 2>&1)
  if [ "$answer" = PONG ]; then
    report redis OK "PONG from $REDIS_URL_SHOWN"
  else
    report redis FAIL "no PONG from $REDIS_URL_SHOWN: $(one_line <<<"$answer")"
  fi
}

# MQTT broker: it publishes its uptime on $SYS every few seconds.
check_broker() {
  # shellcheck disable=SC2016  # $SYS is the broker's topic, not a shell variable
  if uptime=$(XDG_CONFIG_HOME="$work/mqtt" mosquitto_sub -h "$MQTT_HOST" -p "$MQTT_PORT" \
    -t '$SYS/broker/uptime' -C 1 -W "$CHECK_TIMEOUT" 2>&1) && [ -n "$uptime" ]; then
    report "mqtt broker" OK "$MQTT_HOST:$MQTT_PORT up $uptime"
  else
    report "mqtt broker" FAIL "no \$SYS/broker/uptime from $MQTT_HOST:$MQTT_PORT: $(one_line <<<"$uptime")"
  fi
}

# Celery: one ping broadcast; every queue's worker node on this host must answer it.
host=$(hostname)
check_celery() {
  queues=$(cd "$ROOT" && "$PYTHON" -c \
    'from apps.core.tasks.celery_settings import QUEUES; print(" ".join(q.name for q in QUEUES))')
  pongs=$(cd "$ROOT" && timeout $((CHECK_TIMEOUT + 10)) "$CELERY" -A intelliwiz_config \
    inspect ping --timeout 3 --json 2>/dev/null)
  for queue in $queues; do
    if grep -q "\"$queue@$host\"" <<<"$pongs"; then
      report "celery $queue" OK "$queue@$host answered ping"
    else
      report "celery $queue" FAIL "no answer to ping from $queue@$host"
    fi
  done
}

# The subscriber process on this host (`manage.py mqtt_subscriber`, under supervisor or systemd).
# A name match cannot tell this stack's subscriber from another's (a test run, a second stack),
# so the next check asks Redis.
check_subscriber_process() {
  if pids=$(pgrep -f -- 'manage.py mqtt_subscriber'); then
    report "mqtt subscriber process" OK "pid $(one_line <<<"$pids")"
  else
    report "mqtt subscriber process" FAIL "no 'manage.py mqtt_subscriber' process on $host"
  fi
}

# The subscribers of *this* stack: each refreshes mqtt_subscriber:status:<client id> in Redis
# (DB 0) every 5 s, with the topic kinds its session reads, and the key expires 15 s after the
# last refresh (apps/core/intake_status.py). Judged as /monitoring/health/ judges them: every kind
# must be read by a connected subscriber (the urgent lane's alerts and the routine lane's rest).
check_subscribers() {
  if subscribers=$(cd "$ROOT" && timeout $((CHECK_TIMEOUT + 10)) "$PYTHON" - 2>&1 <<'EOF'
import django

django.setup()
from apps.monitoring.health import check_mqtt_subscriber

print(" ".join(check_mqtt_subscriber()["subscribers"]))
EOF
  ); then
    report "mqtt subscriber connected" OK "$(tail -n 1 <<<"$subscribers")"
  else
    report "mqtt subscriber connected" FAIL "$(tail -n 1 <<<"$subscribers" | sed 's/^.*CheckFailed: //')"
  fi
}

# Channel layer: a message sent to a fresh channel comes back, through Redis DB 2.
check_channel_layer() {
  if layer=$(cd "$ROOT" && timeout $((CHECK_TIMEOUT + 10)) "$PYTHON" - 2>&1 <<'EOF'
import asyncio
import django

django.setup()
from apps.monitoring.health import check_channel_layer

asyncio.run(check_channel_layer())
EOF
  ); then
    report "channel layer" OK "round trip through Redis"
  else
    report "channel layer" FAIL "$(tail -n 1 <<<"$layer")"
  fi
}

# Metrics: the endpoint answers and carries the Celery gauges read from Redis.
check_metrics() {
  if ! metrics=$(curl -sS --max-time "$CHECK_TIMEOUT" -f "${curl_auth[@]}" \
    "$BASE_URL/metrics/export/" 2>&1); then
    report "metrics endpoint" FAIL "$BASE_URL/metrics/export/: $(one_line <<<"$metrics")"
  elif grep -q '^celery_queue_depth{' <<<"$metrics"; then
    report "metrics endpoint" OK "$BASE_URL/metrics/export/ has the celery gauges"
  else
    report "metrics endpoint" FAIL "$BASE_URL/metrics/export/ answered without celery_queue_depth \
  ($(grep '^message_bus_redis_up' <<<"$metrics" || echo 'no message_bus_redis_up'))"
  fi
}

# The application's own view: 200, or 503 naming what is down.
check_health_endpoint() {
  body_file="$work/health.json"
  error_file="$work/health.err"
  status=$(curl -sS --max-time $((CHECK_TIMEOUT + 5)) -o "$body_file" -w '%{http_code}' \
    "${curl_auth[@]}" "$BASE_URL/monitoring/health/" 2>"$error_file")
  if [ "$status" = 200 ]; then
    report "/monitoring/health/" OK "200 healthy"
  elif [ "$status" = 000 ]; then
    report "/monitoring/health/" FAIL "no answer from $BASE_URL: $(one_line <"$error_file")"
  elif [ "$status" = 401 ]; then
    report "/monitoring/health/" FAIL "HTTP 401: MONITORING_API_KEY is missing or not the server's"
  else
    down=$("$PYTHON" -c '
import json, sys
try:
    checks = json.load(open(sys.argv[1]))["checks"]
except (ValueError, KeyError):
    sys.exit(0)
down = [name + " (" + check.get("error", "down") + ")" for name, check in checks.items() if not check["ok"]]
print(", ".join(down))
' "$body_file" 2>/dev/null)
    report "/monitoring/health/" FAIL "HTTP $status${down:+; down: $down}"
  fi
}

checks=(check_redis check_broker check_celery check_subscriber_process check_subscribers
  check_channel_layer check_metrics check_health_endpoint)
for check in "${checks[@]}"; do
  "$check" >"$work/$check.out" &
done
wait
failed=()
for check in "${checks[@]}"; do
  [ -s "$work/$check.out" ] || report "$check" FAIL "the check printed nothing" >"$work/$check.out"
  while IFS= read -r output; do
    printf '%s\n' "$output"
    if [ "${output:0:4}" != "OK  " ]; then
      name=${output:5:28}
      failed+=("${name%"${name##*[![:space:]]}"}")
    fi
  done <"$work/$check.out"
done

if [ ${#failed[@]} -eq 0 ]; then
  echo "All message bus components healthy"
  exit 0
fi
joined=$(printf '%s, ' "${failed[@]}")
echo "UNHEALTHY: ${joined%, }"
exit 1
