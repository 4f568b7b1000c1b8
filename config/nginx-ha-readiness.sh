#!/bin/sh
# Keeps the HA edge's list of origins (config/nginx-ha.conf includes it) in step with each origin's /readyz,
# so that `fastpull drain` on one replica takes it out of the rotation and `fastpull drain --off` puts it back.
# nginx OSS has no active health checks, hence this poller; passive failover (max_fails, proxy_next_upstream)
# still handles crashes between two polls.
#
#   nginx-ha-readiness.sh          as /docker-entrypoint.d/40-fastpull-ha-readiness.sh in the nginx image: writes
#                                  the list once (nginx has not started yet), then polls in the background
#   nginx-ha-readiness.sh once     writes the list once, exits
#   nginx-ha-readiness.sh watch    polls forever in the foreground, reloading nginx when the list changes
#
# Environment:
#   FASTPULL_HA_ORIGINS         space-separated host:port of every origin (required)
#   FASTPULL_HA_SERVERS_FILE    the file nginx includes in its upstream block (required)
#   FASTPULL_HA_SERVER_PARAMS   parameters of each server line (default: max_fails=2 fail_timeout=10s)
#   FASTPULL_HA_CHECK_SECONDS   seconds between polls (default 2)
#   FASTPULL_HA_DOWN_AFTER      failed polls in a row that take an origin out (default 2; `once` polls once, so 1)
#   FASTPULL_HA_RELOAD          command that makes nginx re-read its configuration (default: nginx -s reload)
set -eu

: "${FASTPULL_HA_ORIGINS:?space-separated host:port of every origin}"
: "${FASTPULL_HA_SERVERS_FILE:?path of the upstream servers file nginx includes}"
params=${FASTPULL_HA_SERVER_PARAMS:-max_fails=2 fail_timeout=10s}
interval=${FASTPULL_HA_CHECK_SECONDS:-2}
down_after=${FASTPULL_HA_DOWN_AFTER:-2}
reload=${FASTPULL_HA_RELOAD:-nginx -s reload}

log() { echo "fastpull-ha-readiness: $*" >&2; }

# Asks every origin's /readyz and keeps, per origin, how many polls in a row failed (fails_1, fails_2, … in
# this shell). An origin is down once FASTPULL_HA_DOWN_AFTER polls in a row got anything but 200 (drained, disk
# low, shutting down, unreachable, or too slow): one slow answer from a busy origin does not reload the edge.
poll() {
  i=0
  ready=''
  states=''
  for origin in $FASTPULL_HA_ORIGINS; do
    i=$((i + 1))
    code=$(curl -s -o /dev/null -w '%{http_code}' --connect-timeout 1 --max-time 2 "http://$origin/readyz" || true)
    eval "n=\${fails_$i:-0}"
    if [ "$code" = 200 ]; then n=0; else n=$((n + 1)); fi
    eval "fails_$i=$n"
    if [ "$n" -lt "$down_after" ]; then
      ready=yes
      states="$states $origin=up"
    else
      states="$states $origin=down"
    fi
  done
}

# Prints the servers file for the last poll. When no origin is up all are listed as usable, since an unready
# origin still serves downloads and a 502 for every request helps nobody.
render() {
  echo "# written by nginx-ha-readiness.sh:$states"
  for origin in $FASTPULL_HA_ORIGINS; do
    mark=''
    if [ -n "$ready" ]; then
      case "$states " in *" $origin=down "*) mark=' down' ;; esac
    fi
    echo "server $origin $params$mark;"
  done
}

# Written beside the target and renamed over it, so nginx never reads half a file.
write_if_changed() {
  next="$FASTPULL_HA_SERVERS_FILE.next"
  poll
  render >"$next"
  if [ -f "$FASTPULL_HA_SERVERS_FILE" ] && cmp -s "$next" "$FASTPULL_HA_SERVERS_FILE"; then
    rm -f "$next"
    return 1
  fi
  chmod 644 "$next"
  mv -f "$next" "$FASTPULL_HA_SERVERS_FILE"
  return 0
}

watch() {
  while :; do
    if write_if_changed; then
      log "$(head -n 1 "$FASTPULL_HA_SERVERS_FILE" | sed 's/^# written by nginx-ha-readiness.sh://'); reloading"
      sh -c "$reload" || log "reload failed: $reload"
    fi
    sleep "$interval"
  done
}

case "${1:-entrypoint}" in
  once)
    down_after=1
    write_if_changed || true
    ;;
  watch) watch ;;
  entrypoint)
    write_if_changed || true
    # The image's entrypoint then execs nginx; this loop lives on beside it.
    watch </dev/null &
    ;;
  *)
    log "usage: $0 [once|watch]"
    exit 2
    ;;
esac
