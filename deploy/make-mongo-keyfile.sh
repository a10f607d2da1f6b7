#!/bin/sh
# The MongoDB replica set's internal-authentication keyfile. compose.yaml's one-shot mongo-keyfile service
# runs this in the mongo image before mongod starts: made once (1008 base64 characters of randomness, within
# mongod's 6 to 1024), owned by the user mongod runs as, mode 0400; kept as it is on later starts.
# Usage: make-mongo-keyfile.sh PATH [OWNER]
set -eu
key="$1"
owner="${2:-mongodb}"
if [ ! -s "$key" ]; then
  umask 077
  head -c 756 /dev/urandom | base64 | tr -d '\n' > "$key.new"
  mv "$key.new" "$key"
  echo "made $key"
fi
chown "$owner" "$key"
chmod 0400 "$key"
