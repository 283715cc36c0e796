// A hookrelay receiver in Java (JDK only; run with `java Receiver.java`):
// it verifies both signatures of every request from the raw body before
// trusting it.
//
//   HOOKRELAY_SECRET=$(kubectl hookrelay secret shop) \
//   HOOKRELAY_WHSEC=$(kubectl hookrelay secret shop --standard-webhooks) \
//   PORT=8090 java Receiver.java

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.Base64;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public class Receiver {
    // Requests older or newer than this are refused (replays).
    static final long TOLERANCE_SECONDS = 300;

    static String env(String name, String fallback) {
        String value = System.getenv(name);
        if (value != null && !value.isEmpty()) return value;
        if (fallback == null) {
            System.err.println(name + " is not set");
            System.exit(2);
        }
        return fallback;
    }

    static final String SECRET = env("HOOKRELAY_SECRET", null);
    static final String WHSEC = env("HOOKRELAY_WHSEC", null);
    static final String SIGNATURE_HEADER = env("SIGNATURE_HEADER", "X-Amplience-Webhook-Signature");

    static byte[] sign(byte[] key, byte[] message) throws Exception {
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(key, "HmacSHA256"));
        return mac.doFinal(message);
    }

    static byte[] decode(String text) {
        try {
            return Base64.getDecoder().decode(text);
        } catch (IllegalArgumentException e) {
            return new byte[0];
        }
    }

    /** Why the request is refused, or null when both signatures hold. */
    static String problem(HttpExchange exchange, byte[] body) throws Exception {
        String id = exchange.getRequestHeaders().getFirst("webhook-id");
        String timestamp = exchange.getRequestHeaders().getFirst("webhook-timestamp");
        String signatures = exchange.getRequestHeaders().getFirst("webhook-signature");
        if (id == null || timestamp == null || signatures == null) {
            return "missing webhook-id, webhook-timestamp or webhook-signature";
        }
        if (!timestamp.matches("\\d{1,18}")
                || Math.abs(System.currentTimeMillis() / 1000 - Long.parseLong(timestamp)) > TOLERANCE_SECONDS) {
            return "webhook-timestamp is outside the tolerance";
        }
        // Standard Webhooks: the key is the base64 after whsec_, the message
        // "{id}.{timestamp}.{body}"; during a secret rotation two signatures come.
        byte[] key = decode(WHSEC.replaceFirst("^whsec_", ""));
        ByteArrayOutputStream message = new ByteArrayOutputStream();
        message.write((id + "." + timestamp + ".").getBytes(StandardCharsets.UTF_8));
        message.write(body);
        byte[] expected = sign(key, message.toByteArray());
        boolean matched = false;
        for (String entry : signatures.split(" ")) {
            String[] parts = entry.split(",", 2);
            if (parts.length == 2 && parts[0].equals("v1") && MessageDigest.isEqual(decode(parts[1]), expected)) {
                matched = true;
            }
        }
        if (!matched) return "webhook-signature does not match";
        // The CMS's signature: HMAC-SHA256 of the body keyed with the secret's UTF-8 bytes.
        String bodySignature = exchange.getRequestHeaders().getFirst(SIGNATURE_HEADER);
        if (bodySignature == null
                || !MessageDigest.isEqual(decode(bodySignature), sign(SECRET.getBytes(StandardCharsets.UTF_8), body))) {
            return SIGNATURE_HEADER + " does not match";
        }
        return null;
    }

    static void answer(HttpExchange exchange, int code, String text) throws IOException {
        byte[] data = (text + "\n").getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("Content-Type", "text/plain");
        exchange.sendResponseHeaders(code, data.length);
        exchange.getResponseBody().write(data);
        exchange.close();
    }

    public static void main(String[] args) throws IOException {
        String host = env("HOST", "127.0.0.1");
        int port = Integer.parseInt(env("PORT", "8090"));
        HttpServer server = HttpServer.create(new InetSocketAddress(host, port), 0);
        server.createContext("/", exchange -> {
            try {
                byte[] body = exchange.getRequestBody().readAllBytes();
                String refused = exchange.getRequestMethod().equals("POST") ? problem(exchange, body) : "only POST is taken";
                if (refused != null) {
                    System.out.println("refused: " + refused);
                    answer(exchange, 401, refused);
                    return;
                }
                System.out.println("verified " + exchange.getRequestHeaders().getFirst("webhook-id"));
                answer(exchange, 200, "ok");
            } catch (Exception e) {
                answer(exchange, 500, "error");
            }
        });
        server.start();
        System.out.println("listening on " + host + ":" + port);
    }
}
