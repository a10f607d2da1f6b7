#!/bin/sh
# Every secret compose.yaml refuses to render without, generated into an env file (default: .env beside
# compose.yaml, which docker compose reads), mode 0600. It never overwrites one: rotating a secret is a
# deliberate step (docs/operations.md#secrets). Hex values, so they go into URLs as they are.
# Usage: deploy/make-secrets.sh [FILE]
set -eu
out="${1:-$(dirname "$0")/../.env}"
umask 077
set -C  # refuse to overwrite, atomically
if ! (: > "$out") 2>/dev/null; then
  echo "$out exists: not overwriting the secrets it holds" >&2
  exit 1
fi
{
  echo "# Health Mate's compose secrets, made by deploy/make-secrets.sh on $(date -u +%F). Keep this file private."
  for name in JWT_SECRET WEBHOOK_SECRET TURN_SECRET MONGO_ROOT_PASSWORD MONGO_PASSWORD REDIS_PASSWORD \
              MQTT_BRIDGE_PASSWORD; do
    echo "HEALTHMATE_$name=$(openssl rand -hex 32)"
  done
} >> "$out"
echo "wrote $out"
