<?php
// A hookrelay receiver in PHP (no extensions beyond the core): it verifies
// both signatures of every request from the raw body before trusting it.
// Behind your web server as any PHP page, or on its own:
//
//   HOOKRELAY_SECRET=$(kubectl hookrelay secret shop) \
//   HOOKRELAY_WHSEC=$(kubectl hookrelay secret shop --standard-webhooks) \
//   php -S 127.0.0.1:8090 receiver.php

// Requests older or newer than this are refused (replays).
const TOLERANCE_SECONDS = 300;

function required(string $name): string {
    $value = getenv($name);
    if ($value === false || $value === '') {
        http_response_code(500);
        exit("$name is not set\n");
    }
    return $value;
}

/** Why the request is refused, or null when both signatures hold. */
function problem(array $headers, string $body): ?string {
    $secret = required('HOOKRELAY_SECRET');
    $whsec = required('HOOKRELAY_WHSEC');
    $signatureHeader = getenv('SIGNATURE_HEADER') ?: 'X-Amplience-Webhook-Signature';
    $id = $headers['webhook-id'] ?? '';
    $timestamp = $headers['webhook-timestamp'] ?? '';
    $signatures = $headers['webhook-signature'] ?? '';
    if ($id === '' || $timestamp === '' || $signatures === '') {
        return 'missing webhook-id, webhook-timestamp or webhook-signature';
    }
    if (!ctype_digit($timestamp) || abs(time() - (int) $timestamp) > TOLERANCE_SECONDS) {
        return 'webhook-timestamp is outside the tolerance';
    }
    // Standard Webhooks: the key is the base64 after whsec_, the message
    // "{id}.{timestamp}.{body}"; during a secret rotation two signatures come.
    $key = base64_decode(preg_replace('/^whsec_/', '', $whsec), true) ?: '';
    $expected = hash_hmac('sha256', "$id.$timestamp.$body", $key, true);
    $matched = false;
    foreach (explode(' ', $signatures) as $entry) {
        [$version, $signature] = array_pad(explode(',', $entry, 2), 2, '');
        if ($version === 'v1' && hash_equals($expected, base64_decode($signature, true) ?: '')) {
            $matched = true;
        }
    }
    if (!$matched) {
        return 'webhook-signature does not match';
    }
    // The CMS's signature: HMAC-SHA256 of the body keyed with the secret's UTF-8 bytes.
    $bodySignature = base64_decode($headers[strtolower($signatureHeader)] ?? '', true) ?: '';
    if (!hash_equals(hash_hmac('sha256', $body, $secret, true), $bodySignature)) {
        return "$signatureHeader does not match";
    }
    return null;
}

$headers = array_change_key_case(getallheaders(), CASE_LOWER);
$body = file_get_contents('php://input');
$refused = $_SERVER['REQUEST_METHOD'] === 'POST' ? problem($headers, $body) : 'only POST is taken';
header('Content-Type: text/plain');
if ($refused !== null) {
    error_log("refused: $refused");
    http_response_code(401);
    echo "$refused\n";
    return;
}
error_log('verified ' . $headers['webhook-id']);
echo "ok\n";
