#!/bin/sh
# The mosquitto service's entrypoint in compose.yaml (POSIX sh; the image's busybox is enough).
# app1 keeps the broker's passwd and acl files (HEALTHMATE_MQTT_BROKER_DIR) in a volume shared read-only
# with this container. It cannot signal the broker across containers, so this script does what the
# server's SIGHUP would: it copies the files where mosquitto.conf reads them, owned by the broker's user
# (the server writes them 0640 as its own user), and makes the broker reload them whenever they change.
# It copies the TLS pair the same way (the operator's key may be 0600 and owned by anyone).
set -eu
src="${HEALTHMATE_MQTT_BROKER_DIR:-/run/healthmate/mqtt}"  # passwd and acl, written by the server
tls="${HEALTHMATE_TLS_DIR:-/run/healthmate/tls}"            # fullchain.pem and privkey.pem
base="${MOSQUITTO_DIR:-/mosquitto}"                         # auth/, tls/ and data/, as mosquitto.conf names them
conf="${MOSQUITTO_CONF:-/healthmate/mosquitto.conf}"
user="${MOSQUITTO_USER:-mosquitto}"
every="${MOSQUITTO_RELOAD_S:-2}"                            # seconds between looks at the server's files

private_copy() {  # private_copy DIR FILE...: copies readable by the broker's user only
  dir="$1"
  shift
  mkdir -p "$dir"
  cp "$@" "$dir/"
  if [ "$(id -u)" = 0 ]; then chown -R "$user" "$dir"; fi
  chmod -R go-rwx "$dir"
}

changed() {
  ! cmp -s "$src/passwd" "$base/auth/passwd" || ! cmp -s "$src/acl" "$base/auth/acl"
}

until [ -s "$src/passwd" ] && [ -s "$src/acl" ]; do
  echo "waiting for the server to write $src/passwd and $src/acl"
  sleep "$every"
done
private_copy "$base/tls" "$tls/fullchain.pem" "$tls/privkey.pem"
private_copy "$base/auth" "$src/passwd" "$src/acl"
mkdir -p "$base/data"
if [ "$(id -u)" = 0 ]; then chown "$user" "$base/data"; fi

mosquitto -c "$conf" &
broker=$!
trap 'kill -TERM "$broker" 2>/dev/null || true' INT TERM
while kill -0 "$broker" 2>/dev/null; do
  sleep "$every" &
  wait $! || true  # returns early on INT/TERM, whose trap stops the broker
  if kill -0 "$broker" 2>/dev/null && changed; then
    private_copy "$base/auth" "$src/passwd" "$src/acl"
    kill -HUP "$broker"
    echo "the server's passwd/acl changed: broker reloaded"
  fi
done
wait "$broker"
