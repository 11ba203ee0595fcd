package testharness

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
)

// VaultProxy stands between a service and a real Vault and injects faults by request
// path: it can answer for Vault (a 503, an outage), or act before or after Vault
// answered (kill the caller at a precise step), and it counts requests and Vault's
// successful answers per path. Paths are Vault API paths such as
// "/v1/auth/token/revoke-accessor".
type VaultProxy struct {
	// URL is the proxy's address, to give the service as its Vault.
	URL string

	mu    sync.Mutex
	hooks map[string]VaultHook
	seen  map[string]int
	ok    map[string]int
}

// VaultHook acts on the requests to one path. n counts the requests to the path,
// from 1.
type VaultHook struct {
	// Before runs before the request is forwarded; a non-zero status is answered
	// instead of forwarding it.
	Before func(n int) (status int)
	// After runs once Vault answered status, before the answer goes back to the caller.
	After func(n, status int)
}

// NewVaultProxy starts a proxy to the Vault at target; it is closed at cleanup.
func NewVaultProxy(tb testing.TB, target string) *VaultProxy {
	tb.Helper()
	u, err := url.Parse(target)
	if err != nil {
		tb.Fatal(err)
	}
	p := &VaultProxy{hooks: map[string]VaultHook{}, seen: map[string]int{}, ok: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		path := resp.Request.URL.Path
		p.mu.Lock()
		h, n := p.hooks[path], p.seen[path]
		if resp.StatusCode/100 == 2 {
			p.ok[path]++
		}
		p.mu.Unlock()
		if h.After != nil {
			h.After(n, resp.StatusCode)
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.seen[r.URL.Path]++
		h, n := p.hooks[r.URL.Path], p.seen[r.URL.Path]
		p.mu.Unlock()
		if h.Before != nil {
			if status := h.Before(n); status != 0 {
				http.Error(w, `{"errors":["injected fault"]}`, status)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	tb.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// Set sets the hook of path (the zero hook removes it).
func (p *VaultProxy) Set(path string, h VaultHook) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.Before == nil && h.After == nil {
		delete(p.hooks, path)
		return
	}
	p.hooks[path] = h
}

// Requests returns how many requests to path reached the proxy.
func (p *VaultProxy) Requests(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[path]
}

// Succeeded returns how many requests to path Vault answered with a 2xx status.
func (p *VaultProxy) Succeeded(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ok[path]
}
