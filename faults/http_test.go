package faults

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHostileHTTPClients, against the real process: a client that declares a body and
// sends one byte of it is cut off by the read timeout (it held the connection for
// over 40 s on main); a 10 MB body is answered 413; text after the JSON body 400; and
// none of them changes anything.
func TestHostileHTTPClients(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	r.ks.Start(t)

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", r.ks.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /api/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", apiToken)
	began := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(40 * time.Second))
	_, _ = io.ReadAll(c)
	held := time.Since(began)
	if held > 15*time.Second {
		t.Fatalf("a one-byte body held the connection %s", held.Round(time.Second))
	}

	huge := `{"who":"eve","reason":"` + strings.Repeat("x", 10<<20) + `"}`
	if code, _ := r.api(http.MethodPost, "/api/pause", huge); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("10 MB body: %d, want 413", code)
	}
	if code, _ := r.api(http.MethodPost, "/api/pause", `{"who":"eve","reason":"x"} and more`); code != http.StatusBadRequest {
		t.Fatalf("text after the body: %d, want 400", code)
	}
	if _, b := r.api(http.MethodGet, "/api/status", ""); strings.Contains(string(b), `"paused": true`) {
		t.Fatalf("a refused request paused automation: %s", b)
	}
	t.Logf("one-byte body cut off after %s; 10 MB → 413; trailing text → 400; nothing paused", held.Round(100*time.Millisecond))
}
