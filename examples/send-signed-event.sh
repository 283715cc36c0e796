#!/usr/bin/env bash
# Sends one event to a hub that verifies Standard Webhooks signatures
# (spec.ingest.verify: [{scheme: standardWebhooks, secretRef: …}]), signed as a
# Standard Webhooks sender signs: HMAC-SHA256 with the base64-decoded secret
# (after "whsec_") over "{id}.{timestamp}.{body}". Needs bash, openssl, curl.
#
#   send-signed-event.sh EVENTS_URL SECRET EVENT_ID BODY_FILE
#
# EVENTS_URL: https://hooks.example.com/v1/namespaces/NS/hubs/HUB/events
# The event id is the message id: sending the same id again is the same event.
set -euo pipefail
url=${1:?usage: send-signed-event.sh EVENTS_URL SECRET EVENT_ID BODY_FILE}
secret=${2:?secret (whsec_…)}
id=${3:?event id}
body_file=${4:?body file}

timestamp=$(date +%s)
key_hex=$(printf '%s' "${secret#whsec_}" | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \n')
signature=$({ printf '%s.%s.' "$id" "$timestamp"; cat "$body_file"; } |
  openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key_hex" -binary | openssl base64 -A)

curl --silent --show-error --fail-with-body \
  -H 'Content-Type: application/json' \
  -H "webhook-id: $id" \
  -H "webhook-timestamp: $timestamp" \
  -H "webhook-signature: v1,$signature" \
  --data-binary "@$body_file" \
  "$url"
