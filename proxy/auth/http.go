package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"mailproxy/protocols"
)

// The limits on what an auth_http service may send back: the reply is
// headers only (nginx ignores the body), so both are small.
const (
	maxReplyHeader = 16 << 10
	maxReplyBody   = 64 << 10
	maxCached      = 100_000
)

// HTTPOptions configure an HTTP lookup.
type HTTPOptions struct {
	// URL of the service (nginx's auth_http); required.
	URL string
	// Timeout bounds one lookup: connect, request, reply. Default 5s.
	Timeout time.Duration
	// CacheTTL keeps successful lookups this long, keyed by protocol,
	// client address, user and a salted hash of the password (never the
	// password); 0: no cache.
	CacheTTL time.Duration
	// Transport, when set, replaces the default one (connection reuse,
	// bounded headers).
	Transport http.RoundTripper
	// Now is the clock of the cache; default time.Now.
	Now func() time.Time
}

// HTTPRequest is what mailproxy tells the service about a login attempt.
type HTTPRequest struct {
	Method   string // Auth-Method: plain (PLAIN, LOGIN, USER/PASS, IMAP LOGIN)
	User     string
	Pass     protocols.Password
	Protocol string // imap | pop3 | smtp
	Attempt  int    // Auth-Login-Attempt: 1 for the session's first
	ClientIP string
	SSL      bool // the client connection is TLS
}

// HTTPResult is the service's answer.
type HTTPResult struct {
	OK        bool
	Status    string        // Auth-Status: "OK" or the reason, for the log
	Wait      time.Duration // Auth-Wait: before the failed-login reply
	ErrorCode string        // Auth-Error-Code: for SMTP, e.g. "535 5.7.8"
	Server    string        // Auth-Server:Auth-Port, "" when not given
	User      string        // Auth-User: log in to the backend as this; "" = the client's
	Pass      protocols.Password
	Cached    bool
}

// ErrHTTPReply is a reply the service should not have sent (no
// Auth-Status, a bad Auth-Port, a status other than 200): like an
// unreachable service, a temporary failure, never a login.
var ErrHTTPReply = errors.New("auth_http: bad reply")

// HTTP asks an nginx-style auth_http service whether a login may pass and
// where to. It reuses connections and is safe for concurrent use.
type HTTP struct {
	o      HTTPOptions
	client *http.Client
	salt   [16]byte

	mu    sync.Mutex
	cache map[[32]byte]cached
}

type cached struct {
	res     HTTPResult
	expires time.Time
}

// NewHTTP returns a lookup for opts.
func NewHTTP(opts HTTPOptions) (*HTTP, error) {
	if opts.URL == "" {
		return nil, errors.New("auth_http: no URL")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	tr := opts.Transport
	if tr == nil {
		tr = &http.Transport{
			DialContext:            (&net.Dialer{Timeout: opts.Timeout}).DialContext,
			MaxIdleConns:           64,
			MaxIdleConnsPerHost:    64,
			IdleConnTimeout:        90 * time.Second,
			MaxResponseHeaderBytes: maxReplyHeader,
			ResponseHeaderTimeout:  opts.Timeout,
		}
	}
	h := &HTTP{o: opts, client: &http.Client{Transport: tr, Timeout: opts.Timeout}, cache: map[[32]byte]cached{}}
	rand.Read(h.salt[:])
	return h, nil
}

// cacheKey hashes what makes a lookup the same; the password only salted
// and hashed, so the cache never holds it.
func (h *HTTP) cacheKey(r HTTPRequest) [32]byte {
	s := sha256.New()
	s.Write(h.salt[:])
	for _, f := range []string{r.Protocol, r.Method, r.ClientIP, r.User, string(r.Pass)} {
		fmt.Fprintf(s, "%d:%s", len(f), f)
	}
	var k [32]byte
	s.Sum(k[:0])
	return k
}

// Lookup asks the service about r, or answers from the cache. An error
// (the service unreachable, too slow, or a bad reply) is a temporary
// failure, wrapping protocols.ErrAuthUnavailable.
func (h *HTTP) Lookup(ctx context.Context, r HTTPRequest) (HTTPResult, error) {
	key := h.cacheKey(r)
	if res, ok := h.cached(key); ok {
		return res, nil
	}
	res, err := h.ask(ctx, r)
	if err != nil {
		return HTTPResult{}, fmt.Errorf("%w: %w", protocols.ErrAuthUnavailable, err)
	}
	if res.OK && h.o.CacheTTL > 0 {
		h.store(key, res)
	}
	return res, nil
}

func (h *HTTP) cached(key [32]byte) (HTTPResult, bool) {
	if h.o.CacheTTL <= 0 {
		return HTTPResult{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.cache[key]
	if !ok || h.o.Now().After(c.expires) {
		return HTTPResult{}, false
	}
	c.res.Cached = true
	return c.res, true
}

func (h *HTTP) store(key [32]byte, res HTTPResult) {
	now := h.o.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.cache) >= maxCached {
		for k, c := range h.cache {
			if now.After(c.expires) {
				delete(h.cache, k)
			}
		}
		if len(h.cache) >= maxCached {
			return
		}
	}
	h.cache[key] = cached{res: res, expires: now.Add(h.o.CacheTTL)}
}

// ask does one request (nginx's: GET with the Auth-* headers, the user
// and password percent-encoded) and reads the reply headers.
func (h *HTTP) ask(ctx context.Context, r HTTPRequest) (HTTPResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.o.URL, nil)
	if err != nil {
		return HTTPResult{}, err
	}
	ssl := "off"
	if r.SSL {
		ssl = "on"
	}
	hd := req.Header
	hd.Set("Auth-Method", r.Method)
	hd.Set("Auth-User", escape(r.User))
	hd.Set("Auth-Pass", escape(string(r.Pass)))
	hd.Set("Auth-Protocol", r.Protocol)
	hd.Set("Auth-Login-Attempt", strconv.Itoa(r.Attempt))
	hd.Set("Client-IP", r.ClientIP)
	hd.Set("Client-Host", "[UNAVAILABLE]")
	hd.Set("Auth-SSL", ssl)
	resp, err := h.client.Do(req)
	if err != nil {
		return HTTPResult{}, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxReplyBody)) // lets the connection be reused
	if resp.StatusCode != http.StatusOK {
		return HTTPResult{}, fmt.Errorf("%w: HTTP status %s", ErrHTTPReply, resp.Status)
	}
	return parseReply(resp.Header)
}

// parseReply reads nginx's reply headers.
func parseReply(hd http.Header) (HTTPResult, error) {
	res := HTTPResult{Status: hd.Get("Auth-Status"), ErrorCode: hd.Get("Auth-Error-Code")}
	if res.Status == "" {
		return res, fmt.Errorf("%w: no Auth-Status", ErrHTTPReply)
	}
	res.OK = res.Status == "OK"
	if w := hd.Get("Auth-Wait"); w != "" {
		n, err := strconv.Atoi(w)
		if err != nil || n < 0 || n > 3600 {
			return res, fmt.Errorf("%w: Auth-Wait %q", ErrHTTPReply, w)
		}
		res.Wait = time.Duration(n) * time.Second
	}
	if !res.OK {
		return res, nil
	}
	server, port := hd.Get("Auth-Server"), hd.Get("Auth-Port")
	if server != "" || port != "" {
		if n, err := strconv.Atoi(port); server == "" || err != nil || n < 1 || n > 65535 {
			return res, fmt.Errorf("%w: Auth-Server %q Auth-Port %q", ErrHTTPReply, server, port)
		}
		res.Server = net.JoinHostPort(server, port)
	}
	res.User, res.Pass = hd.Get("Auth-User"), protocols.Password(hd.Get("Auth-Pass"))
	return res, nil
}

// escape percent-encodes what cannot travel in a header value, and "%"
// itself, as nginx does for Auth-User and Auth-Pass.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
