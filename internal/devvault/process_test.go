package devvault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// script writes an executable shell script standing in for the server binary, for the
// fault paths only (the real server is exercised in internal/testharness).
func script(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake-devvault")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestStartFaults(t *testing.T) {
	sealed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"initialized":true,"sealed":true}`)
	}))
	defer sealed.Close()
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<html>not vault</html>`)
	}))
	defer garbage.Close()
	notExec := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(notExec, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		bin      string
		wantErr  error
		wantText string
	}{
		{"no binary", "", nil, "BinPath is required"},
		{"not executable", notExec, nil, "not an executable"},
		{"exits at once", script(t, `echo "devvault: listen on 127.0.0.1:1: address already in use" >&2; exit 1`),
			ErrNotReady, "address already in use"},
		{"never ready", script(t, `exec sleep 30`), ErrNotReady, "no ready line"},
		{"stays sealed", script(t, `echo "devvault listening on `+sealed.URL+`"; exec sleep 30`),
			ErrNotReady, "sealed=true"},
		{"answers garbage", script(t, `echo "devvault listening on `+garbage.URL+`"; exec sleep 30`),
			ErrNotReady, "undecodable"},
		{"bad ready line", script(t, `echo "devvault listening on http://nonsense"; exec sleep 30`),
			ErrNotReady, "bad address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Start(context.Background(), StartOptions{
				BinPath: tt.bin, ReadyTimeout: 2 * time.Second, StopGrace: time.Second,
			})
			if err == nil {
				p.Stop(context.Background())
				t.Fatal("Start succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("error %q does not mention %q", err, tt.wantText)
			}
		})
	}
}

func TestStartContextCancelled(t *testing.T) {
	bin := script(t, `exec sleep 30`)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Start(ctx, StartOptions{BinPath: bin}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Start with a cancelled context: %v", err)
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"initialized":true,"sealed":false}`)
	}))
	defer ready.Close()
	// Ignores SIGTERM, so only SIGKILL ends it.
	bin := script(t, `trap "" TERM; echo "devvault listening on `+ready.URL+`"; while :; do sleep 0.05; done`)
	p, err := Start(context.Background(), StartOptions{BinPath: bin, StopGrace: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if p.Addr() != ready.URL {
		t.Fatalf("Addr = %s, want %s", p.Addr(), ready.URL)
	}
	if p.PID() <= 0 {
		t.Fatalf("PID = %d", p.PID())
	}
	if err := p.Stop(context.Background()); !errors.Is(err, ErrKilled) {
		t.Fatalf("Stop of a process ignoring SIGTERM: %v, want ErrKilled", err)
	}
	if err := p.Pause(); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Pause after Stop: %v, want ErrNotRunning", err)
	}
	if err := p.Resume(); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Resume after Stop: %v, want ErrNotRunning", err)
	}
	if err := p.Stop(context.Background()); err == nil || errors.Is(err, ErrKilled) {
		t.Fatalf("second Stop: %v, want the recorded exit error", err)
	}
}
