#!/bin/sh
# A self-signed TLS pair for trying compose.yaml out: nginx (HTTPS) and Mosquitto (MQTT over TLS) read
# fullchain.pem and privkey.pem from the folder. Browsers and devices warn about it (devices must be given
# fullchain.pem as their CA); for a real deployment put your CA-issued pair there under the same names.
# Usage: deploy/make-trial-cert.sh [HOST] [DIR]
#   HOST: the name or address clients use (default: $HEALTHMATE_PUBLIC_HOST, else localhost);
#   DIR: where to write (default: deploy/tls beside this script, what compose.yaml mounts).
set -eu
host="${1:-${HEALTHMATE_PUBLIC_HOST:-localhost}}"
dir="${2:-$(dirname "$0")/tls}"
if [ -e "$dir/fullchain.pem" ] || [ -e "$dir/privkey.pem" ]; then
  echo "$dir already holds a certificate pair: remove it first to make a new trial pair" >&2
  exit 1
fi
case "$host" in
  *:*) kind=IP ;;  # IPv6
  *[!0-9.]*) kind=DNS ;;
  *) kind=IP ;;
esac
umask 077
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 90 -subj "/CN=$host" \
  -addext "subjectAltName=$kind:$host,DNS:localhost,IP:127.0.0.1" \
  -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" 2>/dev/null
chmod 0644 "$dir/fullchain.pem"  # the certificate is public; the key stays 0600
echo "wrote $dir/fullchain.pem and $dir/privkey.pem (self-signed for $host, 90 days)"
