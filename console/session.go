package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/killswitch-dev/killswitch/clock"
	"github.com/killswitch-dev/killswitch/users"
	"go.uber.org/zap"
)

// CookieName is the session cookie's name.
const CookieName = "ks_session"

// CSRFHeader is the header a script sends the session's CSRF token in; CSRFField is
// the form field a form without script sends it in.
const (
	CSRFHeader = "X-CSRF-Token"
	CSRFField  = "_csrf"
)

// The roles the console's routes need.
const (
	viewer   = users.Viewer
	approver = users.Approver
	admin    = users.Admin
)

// session is one logged-in browser. The token is kept in memory only, so that every
// request authenticates again: a user removed, re-roled or rotated is out at once.
type session struct {
	token    string
	csrf     string
	created  time.Time
	lastSeen time.Time
}

// sessions holds the server-side sessions, keyed by the SHA-256 of their cookie value.
type sessions struct {
	clock     clock.Clock
	ttl, idle time.Duration

	mu sync.Mutex
	m  map[[32]byte]*session
}

func newSessions(c clock.Clock, ttl, idle time.Duration) *sessions {
	return &sessions{clock: c, ttl: ttl, idle: idle, m: make(map[[32]byte]*session)}
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("console: random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// create starts a session for the holder of token and returns its cookie value.
func (s *sessions) create(token string) (string, *session, error) {
	id, err := randomToken()
	if err != nil {
		return "", nil, err
	}
	csrf, err := randomToken()
	if err != nil {
		return "", nil, err
	}
	now := s.clock.Now()
	ss := &session{token: token, csrf: csrf, created: now, lastSeen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, old := range s.m { // sweep the expired ones: logins are rare, sessions few
		if s.expired(old, now) {
			delete(s.m, k)
		}
	}
	s.m[sha256.Sum256([]byte(id))] = ss
	return id, ss, nil
}

func (s *sessions) expired(ss *session, now time.Time) bool {
	return now.Sub(ss.created) >= s.ttl || now.Sub(ss.lastSeen) >= s.idle
}

// get returns the live session of a cookie value, refreshing its idle time.
func (s *sessions) get(id string) (*session, bool) {
	k := sha256.Sum256([]byte(id))
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.m[k]
	if !ok {
		return nil, false
	}
	if s.expired(ss, now) {
		delete(s.m, k)
		return nil, false
	}
	ss.lastSeen = now
	cp := *ss
	return &cp, true
}

func (s *sessions) delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, sha256.Sum256([]byte(id)))
}

// viewerKey is the request context's key of the logged-in user and session.
type viewerKey struct{}

// who is the logged-in user of a request.
type who struct {
	user users.User
	csrf string
}

func whoFrom(ctx context.Context) who {
	w, _ := ctx.Value(viewerKey{}).(who)
	return w
}

// authenticate finds the request's session and authenticates its token again.
// It answers the request itself (and returns false) when it cannot.
func (c *Console) authenticate(w http.ResponseWriter, r *http.Request, need users.Role, page bool) (*http.Request, bool) {
	ck, err := r.Cookie(CookieName)
	var ss *session
	if err == nil {
		ss, _ = c.sessions.get(ck.Value)
	}
	if ss == nil {
		if page && r.Header.Get("X-Console-Refresh") == "" && r.Header.Get("Accept") != "text/event-stream" {
			http.Redirect(w, r, Prefix+"login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		} else {
			http.Error(w, "not logged in (or the session expired): log in again", http.StatusUnauthorized)
		}
		return nil, false
	}
	u, err := c.cfg.Users.Authenticate(r.Context(), ss.token)
	switch {
	case errors.Is(err, users.ErrUnauthenticated):
		c.sessions.delete(ck.Value)
		http.Error(w, "the token of this session no longer works: log in again", http.StatusUnauthorized)
		return nil, false
	case err != nil:
		c.cfg.Log.Error("console: cannot authenticate", zap.Error(err)) // the error never holds the token
		http.Error(w, "users unavailable: see the service's log", http.StatusServiceUnavailable)
		return nil, false
	}
	if !u.Role.Allows(need) {
		c.cfg.Log.Info("console: forbidden", zap.String("user", u.Name), zap.String("role", string(u.Role)),
			zap.String("need", string(need)), zap.String("method", r.Method), zap.String("path", r.URL.Path))
		http.Error(w, fmt.Sprintf("forbidden: %s %s needs the %s role; %s has the %s role", r.Method, r.URL.Path, need, u.Name, u.Role),
			http.StatusForbidden)
		return nil, false
	}
	return r.WithContext(context.WithValue(r.Context(), viewerKey{}, who{user: u, csrf: ss.csrf})), true
}

// page wraps a GET handler: a logged-in user with role need.
func (c *Console) page(need users.Role, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r, ok := c.authenticate(w, r, need, true)
		if ok {
			h(w, r)
		}
	})
}

// post wraps a state-changing handler: a same-origin request of a logged-in user with
// role need carrying the session's CSRF token (header or form field).
func (c *Console) post(need users.Role, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !sameOrigin(r) {
			http.Error(w, "cross-site request refused", http.StatusForbidden)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
		r, ok := c.authenticate(w, r, viewer, false)
		if !ok {
			return
		}
		got := r.Header.Get(CSRFHeader)
		if got == "" {
			got = r.PostFormValue(CSRFField)
		}
		if want := whoFrom(r.Context()).csrf; got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			http.Error(w, "missing or wrong CSRF token: reload the page", http.StatusForbidden)
			return
		}
		if u := whoFrom(r.Context()).user; !u.Role.Allows(need) {
			c.cfg.Log.Info("console: forbidden", zap.String("user", u.Name), zap.String("role", string(u.Role)),
				zap.String("need", string(need)), zap.String("path", r.URL.Path))
			http.Error(w, fmt.Sprintf("forbidden: %s needs the %s role; %s has the %s role", r.URL.Path, need, u.Name, u.Role),
				http.StatusForbidden)
			return
		}
		h(w, r)
	})
}

// sameOrigin refuses a request a browser says comes from another site: Sec-Fetch-Site
// when the browser sends it, else the Origin header against the Host.
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		return true
	case "":
	default:
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true // not a browser's cross-site request (those carry Origin on POST)
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// loginPage shows the login form.
func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "login", loginView{Next: safeNext(r.URL.Query().Get("next"))})
}

type loginView struct {
	Next, Error string
}

// login checks a token and starts a session.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		http.Error(w, "cross-site request refused", http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	token := strings.TrimSpace(r.PostFormValue("token"))
	next := safeNext(r.PostFormValue("next"))
	u, err := c.cfg.Users.Authenticate(r.Context(), token)
	switch {
	case token == "" || errors.Is(err, users.ErrUnauthenticated):
		c.render(w, r, http.StatusUnauthorized, "login", loginView{Next: next, Error: "That token is not a user's token."})
		return
	case err != nil:
		c.cfg.Log.Error("console: cannot authenticate", zap.Error(err))
		http.Error(w, "users unavailable: see the service's log", http.StatusServiceUnavailable)
		return
	}
	id, _, err := c.sessions.create(token)
	if err != nil {
		c.cfg.Log.Error("console: session", zap.Error(err))
		http.Error(w, "cannot start a session", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: id, Path: Prefix, HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int(c.cfg.SessionTTL / time.Second)})
	c.cfg.Log.Info("console: login", zap.String("user", u.Name), zap.String("role", string(u.Role)))
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// logout ends the session.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	if ck, err := r.Cookie(CookieName); err == nil {
		c.sessions.delete(ck.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: Prefix, HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
}

// safeNext keeps a redirect target inside the console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return Prefix
	}
	return next
}
