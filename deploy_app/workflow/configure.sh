#!/usr/bin/env bash
# Registers MOTFM with a running MONAI Deploy: the PACS as a source and a destination of the Informatics Gateway,
# the AE title MOTFM that receives the studies (grouped by study, complete after 30 s without an instance), and the
# workflow definition with the Workflow Manager. Ports as in MONAI Deploy Express; change them to yours.
set -euo pipefail
IG=${IG:-http://localhost:5000}   # Informatics Gateway REST API
WM=${WM:-http://localhost:5001}   # Workflow Manager REST API
PACS_AET=${PACS_AET:-PACS} PACS_HOST=${PACS_HOST:-10.0.0.10} PACS_PORT=${PACS_PORT:-104}
here=$(cd "$(dirname "$0")" && pwd)
post() { curl -fsS -X POST "$1" -H 'Content-Type: application/json' --data "$2"; echo; }

post "$IG/config/source" "{\"name\": \"PACS\", \"aeTitle\": \"$PACS_AET\", \"hostIp\": \"$PACS_HOST\"}"
post "$IG/config/destination" "{\"name\": \"PACS\", \"aeTitle\": \"$PACS_AET\", \"hostIp\": \"$PACS_HOST\", \"port\": $PACS_PORT}"
post "$IG/config/ae" '{"name": "motfm", "aeTitle": "MOTFM", "grouping": "0020,000D", "timeout": 30}'
post "$WM/workflows" "@$here/motfm-workflow.json"
