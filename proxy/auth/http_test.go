package auth

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mailproxy/protocols"
)

func TestParseReply(t *testing.T) {
	tests := []struct {
		hdr  map[string]string
		want HTTPResult
		err  bool
	}{
		{map[string]string{"Auth-Status": "OK"}, HTTPResult{OK: true, Status: "OK"}, false},
		{map[string]string{"Auth-Status": "OK", "Auth-Server": "192.0.2.1", "Auth-Port": "143", "Auth-User": "a", "Auth-Pass": "p"},
			HTTPResult{OK: true, Status: "OK", Server: "192.0.2.1:143", User: "a", Pass: "p"}, false},
		{map[string]string{"Auth-Status": "OK", "Auth-Server": "2001:db8::1", "Auth-Port": "110"},
			HTTPResult{OK: true, Status: "OK", Server: "[2001:db8::1]:110"}, false},
		{map[string]string{"Auth-Status": "Invalid login or password", "Auth-Wait": "3", "Auth-Error-Code": "535 5.7.8"},
			HTTPResult{Status: "Invalid login or password", Wait: 3 * time.Second, ErrorCode: "535 5.7.8"}, false},
		{map[string]string{}, HTTPResult{}, true},
		{map[string]string{"Auth-Status": "OK", "Auth-Server": "192.0.2.1"}, HTTPResult{}, true},
		{map[string]string{"Auth-Status": "OK", "Auth-Port": "143"}, HTTPResult{}, true},
		{map[string]string{"Auth-Status": "OK", "Auth-Server": "192.0.2.1", "Auth-Port": "70000"}, HTTPResult{}, true},
		{map[string]string{"Auth-Status": "no", "Auth-Wait": "-1"}, HTTPResult{}, true},
		{map[string]string{"Auth-Status": "no", "Auth-Wait": "soon"}, HTTPResult{}, true},
	}
	for _, tt := range tests {
		h := http.Header{}
		for k, v := range tt.hdr {
			h.Set(k, v)
		}
		got, err := parseReply(h)
		if (err != nil) != tt.err || (err == nil && got != tt.want) {
			t.Errorf("parseReply(%v) = %+v, %v; want %+v, error %v", tt.hdr, got, err, tt.want, tt.err)
		}
		if err != nil && !errors.Is(err, ErrHTTPReply) {
			t.Errorf("untyped error %v", err)
		}
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{"alice": "alice", "a b%c": "a%20b%25c", "\x00\r\n": "%00%0D%0A", "é": "%C3%A9"} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// A service that answers OK for "pw", counting requests and connections.
func okService(t *testing.T, requests, conns *atomic.Int32) string {
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.Header.Get("Auth-Pass") == "pw" {
			w.Header().Set("Auth-Status", "OK")
		} else {
			w.Header().Set("Auth-Status", "Invalid login or password")
		}
	}))
	hs.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	hs.Start()
	t.Cleanup(hs.Close)
	return hs.URL
}

func TestHTTPCacheAndReuse(t *testing.T) {
	var requests, conns atomic.Int32
	now := time.Unix(1_000_000, 0)
	h, err := NewHTTP(HTTPOptions{URL: okService(t, &requests, &conns), CacheTTL: 30 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := HTTPRequest{Method: "plain", User: "alice", Pass: "pw", Protocol: "imap", Attempt: 1}
	for i := range 3 {
		res, err := h.Lookup(ctx, req)
		if err != nil || !res.OK || res.Cached != (i > 0) {
			t.Fatalf("lookup %d: %+v, %v", i, res, err)
		}
	}
	if requests.Load() != 1 {
		t.Errorf("%d requests, want 1 (cached)", requests.Load())
	}
	// Failures are never cached; another password is another key.
	for range 2 {
		if res, _ := h.Lookup(ctx, HTTPRequest{Method: "plain", User: "alice", Pass: "bad", Protocol: "imap"}); res.OK {
			t.Fatal("wrong password passed")
		}
	}
	now = now.Add(31 * time.Second)
	if res, _ := h.Lookup(ctx, req); res.Cached {
		t.Error("served from the cache after the TTL")
	}
	if requests.Load() != 4 || conns.Load() != 1 {
		t.Errorf("%d requests over %d connections, want 4 over 1", requests.Load(), conns.Load())
	}
	for k := range h.cache {
		if strings.Contains(string(k[:]), "pw") {
			t.Error("cache key holds the password")
		}
	}
}

func TestHTTPUnavailable(t *testing.T) {
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	t.Cleanup(func() { close(hang); slow.Close() })
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Auth-Status", "OK")
		w.Header().Set("X-Junk", strings.Repeat("x", 64<<10))
	}))
	t.Cleanup(huge.Close)
	status := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Auth-Status", "OK")
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(status.Close)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + ln.Addr().String()
	ln.Close()
	for name, url := range map[string]string{"slow": slow.URL, "huge": huge.URL, "status 500": status.URL, "closed": closed} {
		h, _ := NewHTTP(HTTPOptions{URL: url, Timeout: 200 * time.Millisecond})
		start := time.Now()
		res, err := h.Lookup(context.Background(), HTTPRequest{User: "alice", Pass: "pw"})
		if !errors.Is(err, protocols.ErrAuthUnavailable) || res.OK {
			t.Errorf("%s: %+v, %v; want ErrAuthUnavailable", name, res, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: took %v with a 200ms timeout", name, d)
		}
	}
}
