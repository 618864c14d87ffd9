#!/bin/sh
# Sends a submission to the jotform rule the way Jotform's webhook delivers it:
# a multipart/form-data POST with one part per field, the answers themselves in
# the `rawRequest` part as a JSON string.
#
# -F 'rawRequest=<file' makes the file's content the value of a plain text part
# (with `@` it would be a file upload, which Jotform does not send). The other
# parts use --form-string, which sends the value literally: -F would treat a
# `;`, `<` or `@` in it as an instruction.
#
# Usage, with `clientrules serve` running:  sh examples/jotform.sh
set -eu

# The example files are addressed from the project root, wherever this is run from.
cd "$(dirname "$0")/.."
base="${CLIENTRULES_URL:-http://127.0.0.1:8080}"

curl -sS -i \
  --form-string 'formID=243105982716058' \
  --form-string 'submissionID=6012849375210468113' \
  --form-string "webhookURL=$base/hooks/jotform" \
  --form-string 'ip=203.0.113.24' \
  --form-string 'formTitle=Request an Inspection' \
  --form-string 'pretty=Name:Daniel Ortiz, Email:Dan.Ortiz@Example.org, Phone Number:(303) 555-0122, Property Address:1450 Elm Street  Denver CO 80203, Inspection Type:Pre-listing inspection, Message:We list the house in January. Any day the week of Dec 16 works.' \
  --form-string 'username=frontrangeinspect' \
  -F 'rawRequest=<examples/jotform-rawRequest.json' \
  --form-string 'type=WEB' \
  "$base/hooks/jotform"
echo
