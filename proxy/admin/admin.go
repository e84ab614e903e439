// Package admin is mailproxy's admin HTTP API and the client that
// `mailproxy ctl` uses to call it. The API is JSON over plain HTTP, meant
// for loopback ([admin] listen, default 127.0.0.1:9025):
//
//	GET  /status                                   node, role, listeners, every backend
//	GET  /users/{user}                             where a user is routed, and the live sessions
//	GET  /metrics                                  Prometheus text format
//	POST /pools/{pool}/backends/{backend}/drain    no new users; live users keep coming
//	POST /pools/{pool}/backends/{backend}/undrain  end a drain
//	POST /pools/{pool}/backends/{backend}/kick     close every session there now
//	POST /pools/{pool}/backends/{backend}/weight   {"weight": N}: the backend's share of new users
//	POST /users/{user}/pin                         {"pool": P, "backend": B}: pin (empty backend: unpin)
//	POST /users/{user}/move                        {"pool": P, "backend": B}: re-point, kick the sessions elsewhere
//	POST /reload                                   load, check and apply the config file (as SIGHUP)
//	GET  /                                         the status page (HTML) over /status, with drain buttons
//
// Drains, weights and pins are kept in the routing store ([store]): with
// Redis every instance sharing it applies them, and with memory they
// persist in state_file; kicks and moves reach every instance of the store.
//
// With [admin] token_file set, POST calls and GET /users/{user} need
// "Authorization: Bearer <token>" (401 otherwise); /status and /metrics
// never do. A POST from a web page (an Origin other than the API's, or,
// without a token, a Host that is not its address) is refused with 403. Errors are
// {"error": "..."} with 404 for an unknown pool, backend or path and 405
// for a wrong method.
//
// The package does not import the server: it reads it through the small
// Server interface, which cmd/mailproxy fills with the running server.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"mailproxy/proxy/config"
	"mailproxy/proxy/peer"
	"mailproxy/routing"
)

// Options configure an API. Zero values take the defaults noted.
type Options struct {
	// Token, when set, is required as a bearer token on every POST call.
	Token string
	// Node names this instance in /status; default the host name.
	Node string
	// Logger gets one line per drain, undrain and kick; default slog.Default().
	Logger *slog.Logger
	// Metrics serves GET /metrics; default 404.
	Metrics http.Handler
	// Peer reports the active/standby pair ([peer]); when set, /status
	// takes the node name and role from it and shows the peer. Nil: no
	// pair, always active.
	Peer func() peer.Status
	// Reload serves POST /reload: it loads, checks and applies the config
	// file, returning what the reload kept for a restart, or why it was
	// refused (the old config then stays). Nil: 404.
	Reload func(ctx context.Context) (notes []string, err error)
	// Address is [admin] listen as configured. Without a token, a call
	// that changes state must name the API as its Host: an IP address,
	// "localhost" or this address's host name; anything else is refused
	// (DNS rebinding).
	Address string
	// OnAction, when set, is called after each drain, undrain and kick
	// with the pool, the backend and the action (proxy.AdminSync.Changed
	// saves the state and sends it to the peer).
	OnAction func(pool, backend, action string)
}

// Server is what the API reads and changes: the running server.
type Server interface {
	Listeners() []ListenerStatus
	Pools() []*routing.Pool
	Pool(name string) *routing.Pool // nil when there is none
	Config() *config.Config         // the config in force; not modified

	// The admin changes. Errors wrap routing.ErrNotFound for an unknown
	// pool, backend or user; others mean the routing store did not take
	// the change.
	SetDraining(ctx context.Context, pool, backend string, on bool) error
	SetWeight(ctx context.Context, pool, backend string, weight int) error
	SetPin(ctx context.Context, pool, user, backend string) error
	Kick(ctx context.Context, pool, backend string) (int, error)
	Move(ctx context.Context, pool, user, backend string) (int, error)
}

// API is the admin HTTP API of one Server. Its methods are safe for
// concurrent use.
type API struct {
	srv   Server
	opts  Options
	log   *slog.Logger
	token [sha256.Size]byte
	mux   *http.ServeMux
	hs    *http.Server
}

// New builds the API for srv. It does not listen: call Serve, or mount
// Handler in a server of your own.
func New(srv Server, opts Options) *API {
	a := &API{srv: srv, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.opts.Node == "" {
		a.opts.Node, _ = os.Hostname()
	}
	a.token = sha256.Sum256([]byte(opts.Token))
	a.routes()
	a.hs = &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	return a
}

// routes registers every endpoint. A pattern with a method wins over the
// same path without one, so the bare paths only answer the wrong methods.
func (a *API) routes() {
	const action = "/pools/{pool}/backends/{backend}/{action}"
	a.mux.HandleFunc("GET /status", a.status)
	a.mux.HandleFunc("GET /users/{user}", a.user)
	a.mux.HandleFunc("POST "+action, a.action)
	a.mux.HandleFunc("GET /{$}", a.page)
	if a.opts.Reload != nil {
		a.mux.HandleFunc("POST /reload", a.reload)
		a.mux.Handle("/reload", methodNotAllowed("POST"))
	}
	a.mux.HandleFunc("POST /users/{user}/{action}", a.userAction)
	if a.opts.Metrics != nil {
		a.mux.Handle("GET /metrics", a.opts.Metrics)
		a.mux.Handle("/metrics", methodNotAllowed("GET"))
	}
	a.mux.Handle("/status", methodNotAllowed("GET"))
	a.mux.Handle("/users/{user}", methodNotAllowed("GET"))
	a.mux.Handle(action, methodNotAllowed("POST"))
	a.mux.Handle("/users/{user}/{action}", methodNotAllowed("POST"))
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
}

// Handler returns the API's handler.
func (a *API) Handler() http.Handler { return http.HandlerFunc(a.guard) }

// guard refuses a state-changing call that a web page could have made:
// one from another origin (a browser sends Origin with every cross-site
// POST, and needs no preflight for a form's), or one to a host name that
// is not the API's (a rebound DNS name pointing at 127.0.0.1). Without a
// token these are all that keeps a page the admin visits from draining
// backends. Tools such as curl and ctl send no Origin.
func (a *API) guard(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if why := a.crossSite(r); why != "" {
			a.log.Warn("admin call refused: cross-site", "method", r.Method, "path", r.URL.Path, "client", r.RemoteAddr, "why", why)
			writeError(w, http.StatusForbidden, "cross-site request refused: "+why)
			return
		}
	}
	a.mux.ServeHTTP(w, r)
}

// crossSite says why r does not come from the API's own origin, or "".
func (a *API) crossSite(r *http.Request) string {
	// With a token a page cannot forge the call anyway (it cannot add
	// the Authorization header without a CORS preflight, which gets no
	// answer here), and remote tools may name the host as they like.
	if a.opts.Token == "" && !a.ownHost(r.Host) {
		return fmt.Sprintf("Host %q is not the admin API's address", r.Host)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return ""
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
		return fmt.Sprintf("Origin %q is not the admin API", origin)
	}
	return ""
}

// ownHost reports whether a Host header names this API: an IP address,
// localhost, or the host of Options.Address.
func (a *API) ownHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if _, err := netip.ParseAddr(host); err == nil || strings.EqualFold(host, "localhost") {
		return true
	}
	own, _, _ := net.SplitHostPort(a.opts.Address)
	return own != "" && strings.EqualFold(host, own)
}

// Serve serves the API on ln until Shutdown or Close, after which it
// returns http.ErrServerClosed.
func (a *API) Serve(ln net.Listener) error {
	a.log.Info("admin API listening", "address", ln.Addr().String(), "token", a.opts.Token != "")
	return a.hs.Serve(ln)
}

// Shutdown stops the API gracefully: no new requests, the running ones end
// until ctx is done.
func (a *API) Shutdown(ctx context.Context) error { return a.hs.Shutdown(ctx) }

// Close stops the API at once.
func (a *API) Close() error { return a.hs.Close() }

// ReadToken reads a bearer token file: its content without surrounding
// white space, which must not be empty.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}

func (a *API) status(w http.ResponseWriter, r *http.Request) {
	st := Status{Node: a.opts.Node, Role: "active", Listeners: a.srv.Listeners(), Pools: []PoolStatus{}}
	if a.opts.Peer != nil {
		ps := a.opts.Peer()
		st.Node, st.Role, st.RoleReason, st.Peer = ps.Node, ps.Role, ps.Reason, &ps.Peer
		st.Pair = &PairStatus{Applied: ps.Applied, VIP: ps.VIP, Interface: ps.Interface, LinkUp: ps.LinkUp,
			Announcements: ps.Announcements, Takeovers: ps.Takeovers, Conflicts: ps.Conflicts}
	}
	for _, p := range a.srv.Pools() {
		st.Pools = append(st.Pools, PoolStatus{Name: p.Name, Backends: p.Status()})
	}
	writeJSON(w, http.StatusOK, st)
}

// user reports a user under the routing key, so "Alice" finds "alice" (and
// "alice@example.org" with a default_domain).
func (a *API) user(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(r) { // who logs in from where is not for everyone
		a.refuse(w, r)
		return
	}
	cfg := a.srv.Config()
	key := cfg.Auth.RoutingKey(r.PathValue("user"))
	us := UserStatus{User: key, Pools: []UserPool{}}
	for _, p := range a.srv.Pools() {
		up := UserPool{Pool: p.Name, Sessions: p.UserSessions(key), Pin: p.Pin(key)}
		if up.Sessions == nil {
			up.Sessions = []routing.SessionInfo{}
		}
		b, live, ok, err := p.Lookup(r.Context(), key)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		if ok {
			up.Backend, up.Live = b, live
		}
		us.Pools = append(us.Pools, up)
	}
	writeJSON(w, http.StatusOK, us)
}

// changeError answers a failed admin change: 404 for an unknown name, 400
// for a bad value, 503 when the routing store did not take it.
func changeError(w http.ResponseWriter, err error, bad bool) {
	switch {
	case errors.Is(err, routing.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case bad:
		writeError(w, http.StatusBadRequest, err.Error())
	default:
		writeError(w, http.StatusServiceUnavailable, err.Error())
	}
}

// readBody decodes a small JSON body into v.
func readBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("body: %w", err)
	}
	return nil
}

// userAction runs pin or move for one user.
func (a *API) userAction(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(r) {
		a.refuse(w, r)
		return
	}
	var body UserChange
	if err := readBody(r, &body); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	user, act := r.PathValue("user"), r.PathValue("action")
	res := UserResult{User: a.srv.Config().Auth.RoutingKey(user), Pool: body.Pool, Backend: body.Backend, Action: act}
	attrs := []any{"user", res.User, "pool", body.Pool, "backend", body.Backend, "client", r.RemoteAddr}
	var err error
	switch act {
	case "pin":
		err = a.srv.SetPin(r.Context(), body.Pool, user, body.Backend)
	case "move":
		if body.Backend == "" {
			writeError(w, http.StatusBadRequest, "move needs a backend")
			return
		}
		res.Kicked, err = a.srv.Move(r.Context(), body.Pool, user, body.Backend)
	default:
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown action %q (want pin or move)", act))
		return
	}
	if err != nil {
		changeError(w, err, false)
		return
	}
	a.log.Info("user "+act, attrs...)
	writeJSON(w, http.StatusOK, res)
}

// action runs drain, undrain, kick or weight on one backend.
func (a *API) action(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(r) {
		a.refuse(w, r)
		return
	}
	pool, b, msg := a.find(r.PathValue("pool"), r.PathValue("backend"))
	if msg != "" {
		writeError(w, http.StatusNotFound, msg)
		return
	}
	res := Result{Pool: pool.Name, Backend: b.Name, Action: r.PathValue("action")}
	attrs := []any{"pool", pool.Name, "backend", b.Name, "client", r.RemoteAddr}
	ctx := r.Context()
	switch res.Action {
	case "drain", "undrain":
		if err := a.srv.SetDraining(ctx, pool.Name, b.Name, res.Action == "drain"); err != nil {
			changeError(w, err, false)
			return
		}
		a.log.Info("backend "+map[string]string{"drain": "draining", "undrain": "undrained"}[res.Action], append(attrs, "sessions", b.Sessions())...)
	case "weight":
		var body WeightChange
		if err := readBody(r, &body); err != nil || body.Weight == nil {
			writeError(w, http.StatusBadRequest, `want a body {"weight": N}`)
			return
		}
		if err := a.srv.SetWeight(ctx, pool.Name, b.Name, *body.Weight); err != nil {
			changeError(w, err, true)
			return
		}
		a.log.Info("backend weight", append(attrs, "weight", *body.Weight)...)
	case "kick":
		before := b.Sessions()
		n, err := a.srv.Kick(ctx, pool.Name, b.Name)
		res.Kicked = n
		a.log.Info(fmt.Sprintf("kicked %d sessions", res.Kicked), append(attrs, "sessions", res.Kicked)...)
		waitReleased(ctx, b, before-res.Kicked)
		if err != nil {
			changeError(w, err, false)
			return
		}
	default:
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown action %q (want drain, undrain, kick or weight)", res.Action))
		return
	}
	if a.opts.OnAction != nil {
		a.opts.OnAction(pool.Name, b.Name, res.Action)
	}
	res.Sessions = b.Sessions()
	for _, st := range pool.Status() {
		if st.Name == b.Name {
			res.State, res.Weight = st.State, st.Weight
		}
	}
	writeJSON(w, http.StatusOK, res)
}

// waitReleased gives kicked sessions a moment to close and release their
// leases (they count until then, so the user is not placed elsewhere while
// the old connection still closes), so the reply's count is meaningful.
func waitReleased(ctx context.Context, b *routing.Backend, target int) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for b.Sessions() > target {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refuse answers a call without the right token.
func (a *API) refuse(w http.ResponseWriter, r *http.Request) {
	a.log.Warn("admin call refused: missing or wrong token", "method", r.Method, "path", r.URL.Path, "client", r.RemoteAddr)
	w.Header().Set("WWW-Authenticate", `Bearer realm="mailproxy"`)
	writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
}

// find looks up a pool and backend by name; msg says what is unknown.
func (a *API) find(poolName, backend string) (*routing.Pool, *routing.Backend, string) {
	p := a.srv.Pool(poolName)
	if p == nil {
		return nil, nil, fmt.Sprintf("no pool %q", poolName)
	}
	b := p.Backend(backend)
	if b == nil {
		return nil, nil, fmt.Sprintf("no backend %q in pool %q", backend, poolName)
	}
	return p, b, ""
}

// authorized checks the bearer token in constant time (over hashes, so
// not even the token's length shows).
func (a *API) authorized(r *http.Request) bool {
	if a.opts.Token == "" {
		return true
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(got[:], a.token[:]) == 1
}

func methodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; use %s", r.Method, allow))
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) // an error means the client went away: nothing to tell it
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}
