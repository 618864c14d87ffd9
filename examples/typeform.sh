#!/bin/sh
# Sends examples/typeform.json to the typeform rule the way Typeform delivers a
# form_response webhook: a JSON POST. Typeform also sends a Typeform-Signature
# header (sha256=<base64 HMAC of the body>); the shipped rule does not check it.
#
# Usage, with `clientrules serve` running:  sh examples/typeform.sh
set -eu

# The example files are addressed from the project root, wherever this is run from.
cd "$(dirname "$0")/.."
base="${CLIENTRULES_URL:-http://127.0.0.1:8080}"

curl -sS -i \
  -H 'Content-Type: application/json' \
  --data-binary @examples/typeform.json \
  "$base/hooks/typeform"
echo
