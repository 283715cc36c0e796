"""A hookrelay receiver in Python (standard library only): it verifies both
signatures of every request from the raw body before trusting it.

    HOOKRELAY_SECRET=$(kubectl hookrelay secret shop) \\
    HOOKRELAY_WHSEC=$(kubectl hookrelay secret shop --standard-webhooks) \\
    PORT=8090 python3 receiver.py
"""

import base64
import binascii
import hashlib
import hmac
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8090"))
SIGNATURE_HEADER = os.environ.get("SIGNATURE_HEADER", "X-Amplience-Webhook-Signature")
# Requests older or newer than this are refused (replays).
TOLERANCE_SECONDS = 300


def required(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set")
    return value


SECRET = required("HOOKRELAY_SECRET")
WHSEC = required("HOOKRELAY_WHSEC")


def decode(text):
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def problem(headers, body):
    """Why the request is refused, or None when both signatures hold."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return "webhook-timestamp is outside the tolerance"
    # Standard Webhooks: the key is the base64 after whsec_, the message
    # "{id}.{timestamp}.{body}"; during a secret rotation two signatures come.
    key = decode(WHSEC.removeprefix("whsec_"))
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    if not any(
        version == "v1" and hmac.compare_digest(decode(signature), expected)
        for version, _, signature in (entry.partition(",") for entry in signatures.split(" "))
    ):
        return "webhook-signature does not match"
    # The CMS's signature: HMAC-SHA256 of the body keyed with the secret's UTF-8 bytes.
    body_signature = hmac.new(SECRET.encode("utf-8"), body, hashlib.sha256).digest()
    if not hmac.compare_digest(decode(headers.get(SIGNATURE_HEADER, "")), body_signature):
        return f"{SIGNATURE_HEADER} does not match"
    return None


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        refused = problem(self.headers, body)
        if refused:
            print(f"refused: {refused}", flush=True)
            self.answer(401, refused)
            return
        print(f"verified {self.headers['webhook-id']}", flush=True)
        self.answer(200, "ok")

    def answer(self, code, text):
        data = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer((HOST, PORT), Receiver)
    print(f"listening on {HOST}:{PORT}", flush=True)
    server.serve_forever()
