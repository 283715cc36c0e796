// A hookrelay receiver in Node.js (no dependencies): it verifies both
// signatures of every request from the raw body before trusting it.
//
//   HOOKRELAY_SECRET=$(kubectl hookrelay secret shop) \
//   HOOKRELAY_WHSEC=$(kubectl hookrelay secret shop --standard-webhooks) \
//   PORT=8090 node receiver.js
'use strict';
const http = require('node:http');
const crypto = require('node:crypto');

const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT || 8090);
const secret = required('HOOKRELAY_SECRET');
const whsec = required('HOOKRELAY_WHSEC');
const signatureHeader = process.env.SIGNATURE_HEADER || 'X-Amplience-Webhook-Signature';
// Requests older or newer than this are refused (replays).
const TOLERANCE_SECONDS = 300;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return value;
}

const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();
const same = (a, b) => a.length === b.length && crypto.timingSafeEqual(a, b);

// Why the request is refused, or null when both signatures hold.
function problem(headers, body) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !timestamp || !signatures) return 'missing webhook-id, webhook-timestamp or webhook-signature';
  if (!/^\d+$/.test(timestamp) || Math.abs(Date.now() / 1000 - Number(timestamp)) > TOLERANCE_SECONDS) {
    return 'webhook-timestamp is outside the tolerance';
  }
  // Standard Webhooks: the key is the base64 after whsec_, the message
  // "{id}.{timestamp}.{body}"; during a secret rotation two signatures come.
  const key = Buffer.from(whsec.replace(/^whsec_/, ''), 'base64');
  const expected = hmac(key, Buffer.concat([Buffer.from(`${id}.${timestamp}.`), body]));
  const standard = signatures.split(' ').some((entry) => {
    const [version, signature] = entry.split(',');
    return version === 'v1' && signature && same(Buffer.from(signature, 'base64'), expected);
  });
  if (!standard) return 'webhook-signature does not match';
  // The CMS's signature: HMAC-SHA256 of the body keyed with the secret's UTF-8 bytes.
  const bodySignature = headers[signatureHeader.toLowerCase()];
  if (!bodySignature || !same(Buffer.from(bodySignature, 'base64'), hmac(Buffer.from(secret, 'utf8'), body))) {
    return `${signatureHeader} does not match`;
  }
  return null;
}

http
  .createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const body = Buffer.concat(chunks);
      const refused = request.method === 'POST' ? problem(request.headers, body) : 'only POST is taken';
      if (refused) {
        console.log(`refused: ${refused}`);
        response.writeHead(401, { 'content-type': 'text/plain' });
        response.end(`${refused}\n`);
        return;
      }
      console.log(`verified ${request.headers['webhook-id']}`);
      response.writeHead(200, { 'content-type': 'text/plain' });
      response.end('ok\n');
    });
  })
  .listen(port, host, () => console.log(`listening on ${host}:${port}`));
