#!/bin/sh
# Sends examples/contact-form.txt to the contact-form rule the way a browser
# submits examples/contact-form.html: an application/x-www-form-urlencoded POST.
# The rule answers 303 See Other with Location: https://example.com/thanks,
# which a browser follows; curl prints it without following.
#
# Usage, with `clientrules serve` running:  sh examples/contact-form.sh
set -eu

# The example files are addressed from the project root, wherever this is run from.
cd "$(dirname "$0")/.."
base="${CLIENTRULES_URL:-http://127.0.0.1:8080}"

# --data-binary sends the file byte for byte (plain -d would strip line breaks).
curl -sS -i \
  -H 'Content-Type: application/x-www-form-urlencoded' \
  --data-binary @examples/contact-form.txt \
  "$base/hooks/contact-form"
echo
