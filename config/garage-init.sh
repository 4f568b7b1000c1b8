#!/bin/sh
# One-shot set-up of the "ha" profile's Garage node (docker-compose.yml, service s3-init): a layout for the
# single node, fastpull's access key, the bucket and the key's rights on it. Every step checks first, so a
# second `docker compose up` changes nothing.
set -eu
: "${FASTPULL_HA_BUCKET:?}" "${FASTPULL_HA_S3_KEY_ID:?}" "${FASTPULL_HA_S3_SECRET:?}"
g() { garage -c /etc/garage.toml "$@"; }

tries=0
until g status >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || { echo "garage-init: the node does not answer" >&2; exit 1; }
  sleep 1
done

if g status | grep -q 'NO ROLE ASSIGNED'; then
  node=$(g node id -q | cut -d@ -f1)
  g layout assign -z dc1 -c "${FASTPULL_HA_S3_CAPACITY:-1T}" "$node"
  g layout apply --version 1
fi
g key info "$FASTPULL_HA_S3_KEY_ID" >/dev/null 2>&1 ||
  g key import --yes -n fastpull "$FASTPULL_HA_S3_KEY_ID" "$FASTPULL_HA_S3_SECRET"
g bucket info "$FASTPULL_HA_BUCKET" >/dev/null 2>&1 || g bucket create "$FASTPULL_HA_BUCKET"
g bucket allow --read --write --owner "$FASTPULL_HA_BUCKET" --key "$FASTPULL_HA_S3_KEY_ID"
echo "garage-init: bucket $FASTPULL_HA_BUCKET ready for key $FASTPULL_HA_S3_KEY_ID"
