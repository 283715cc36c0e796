// A hookrelay receiver in Go (standard library only): it verifies both
// signatures of every request from the raw body before trusting it.
//
//	HOOKRELAY_SECRET=$(kubectl hookrelay secret shop) \
//	HOOKRELAY_WHSEC=$(kubectl hookrelay secret shop --standard-webhooks) \
//	PORT=8090 go run .
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Requests older or newer than this are refused (replays).
const toleranceSeconds = 300

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	if fallback == "" {
		log.Fatalf("%s is not set", name)
	}
	return fallback
}

func sign(key, message []byte) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write(message)
	return mac.Sum(nil)
}

func decode(text string) []byte {
	data, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil
	}
	return data
}

// problem says why the request is refused, or "" when both signatures hold.
func problem(header http.Header, body []byte, secret, whsec, signatureHeader string) string {
	id, timestamp, signatures := header.Get("webhook-id"), header.Get("webhook-timestamp"), header.Get("webhook-signature")
	if id == "" || timestamp == "" || signatures == "" {
		return "missing webhook-id, webhook-timestamp or webhook-signature"
	}
	seconds, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil || math.Abs(float64(time.Now().Unix()-seconds)) > toleranceSeconds {
		return "webhook-timestamp is outside the tolerance"
	}
	// Standard Webhooks: the key is the base64 after whsec_, the message
	// "{id}.{timestamp}.{body}"; during a secret rotation two signatures come.
	key := decode(strings.TrimPrefix(whsec, "whsec_"))
	expected := sign(key, append([]byte(id+"."+timestamp+"."), body...))
	matched := false
	for _, entry := range strings.Split(signatures, " ") {
		version, signature, _ := strings.Cut(entry, ",")
		if version == "v1" && hmac.Equal(decode(signature), expected) {
			matched = true
		}
	}
	if !matched {
		return "webhook-signature does not match"
	}
	// The CMS's signature: HMAC-SHA256 of the body keyed with the secret's UTF-8 bytes.
	if !hmac.Equal(decode(header.Get(signatureHeader)), sign([]byte(secret), body)) {
		return signatureHeader + " does not match"
	}
	return ""
}

func main() {
	address := env("HOST", "127.0.0.1") + ":" + env("PORT", "8090")
	secret, whsec := env("HOOKRELAY_SECRET", ""), env("HOOKRELAY_WHSEC", "")
	signatureHeader := env("SIGNATURE_HEADER", "X-Amplience-Webhook-Signature")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		refused := "only POST is taken"
		if r.Method == http.MethodPost && err == nil {
			refused = problem(r.Header, body, secret, whsec, signatureHeader)
		}
		if refused != "" {
			fmt.Println("refused:", refused)
			http.Error(w, refused, http.StatusUnauthorized)
			return
		}
		fmt.Println("verified", r.Header.Get("webhook-id"))
		fmt.Fprintln(w, "ok")
	})
	fmt.Println("listening on", address)
	log.Fatal(http.ListenAndServe(address, nil))
}
