package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHealthcheck(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			fmt.Fprint(w, `{"status":"ready"}`)
		case "/starting":
			http.Error(w, `{"status":"starting"}`, http.StatusServiceUnavailable)
		case "/slow":
			<-release
		}
	}))
	defer srv.Close()
	defer close(release)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"ready", []string{"--url", srv.URL + "/readyz"}, 0, ""},
		{"not ready", []string{"--url", srv.URL + "/starting"}, 1, "503"},
		{"not listening", []string{"--url", closed.URL + "/readyz"}, 1, "connection refused"},
		{"too slow", []string{"--url", srv.URL + "/slow", "--timeout", "200ms"}, 1, "deadline exceeded"},
		{"not http", []string{"--url", "nats://127.0.0.1:4222"}, 2, "http://"},
		{"no host", []string{"--url", "http:///readyz"}, 2, "http://"},
		{"zero timeout", []string{"--timeout", "0s"}, 2, "positive"},
		{"extra argument", []string{"now"}, 2, "unexpected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			began := time.Now()
			code := dispatch(context.Background(), append([]string{"healthcheck"}, tc.args...), &out, &errOut)
			if code != tc.code || !strings.Contains(errOut.String(), tc.contains) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", code, tc.code, errOut.String(), tc.contains)
			}
			if code == 0 && out.String() != "ok\n" {
				t.Fatalf("stdout %q", out.String())
			}
			if d := time.Since(began); d > 5*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
}
