package integration

import (
	"net/http"
	"strings"
	"testing"

	"mailproxy/routing"
)

// adminRequest sends one request to the admin API with the given headers
// and returns the status code.
func adminRequest(t *testing.T, base, method, path string, header map[string]string) int {
	t.Helper()
	req, err := http.NewRequest(method, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestAdminCrossSite (issue 10, point 10): without a token, a web page in
// the admin's browser must not drain or kick: a POST whose Origin is
// another site, or whose Host is not the admin address (DNS rebinding),
// is refused with 403 and changes nothing. Tools (curl, ctl) send no
// Origin and keep working, as does the API's own origin.
func TestAdminCrossSite(t *testing.T) {
	f1 := newOpsBackend(t, "mail1", users(1, "u"), nil, 0)
	e := startProxy(t, opsConfig("", "mail1", f1.addr))
	ac := startAdmin(t, e, "")
	pool, b := e.Srv.Pool("p"), e.Srv.Pool("p").Backend("mail1")
	hostPort := strings.TrimPrefix(ac.Addr, "http://")
	const drain = "/pools/p/backends/mail1/drain"
	for _, h := range []map[string]string{
		{"Origin": "http://evil.example"},
		{"Origin": "null"},
		{"Origin": "http://127.0.0.1:1"},
		{"Host": "evil.example:" + hostPort[strings.LastIndex(hostPort, ":")+1:]},
		{"Host": "rebind.evil.example"},
	} {
		if code := adminRequest(t, ac.Addr, "POST", drain, h); code != http.StatusForbidden {
			t.Errorf("drain with %v: %d, want 403", h, code)
		}
		if s := pool.State(b, routing.IMAP); s != routing.Up {
			t.Fatalf("drain with %v went through: mail1 is %v", h, s)
		}
	}
	if code := adminRequest(t, ac.Addr, "GET", "/status", map[string]string{"Origin": "http://evil.example"}); code != 200 {
		t.Errorf("GET /status with a foreign Origin: %d (reads change nothing)", code)
	}
	if code := adminRequest(t, ac.Addr, "POST", drain, map[string]string{"Origin": ac.Addr}); code != 200 {
		t.Errorf("drain from the API's own origin: %d", code)
	}
	if code := adminRequest(t, ac.Addr, "POST", "/pools/p/backends/mail1/undrain", nil); code != 200 {
		t.Errorf("undrain without Origin (curl, ctl): %d", code)
	}
	if !strings.Contains(e.Logs.String(), "admin call refused: cross-site") {
		t.Errorf("refused cross-site calls not logged")
	}

	// With a token, remote tools may name the host as they like; a
	// foreign Origin is still refused.
	withToken := startAdmin(t, e, "tok")
	auth := map[string]string{"Authorization": "Bearer tok", "Host": "mailproxy.example.org:9025"}
	if code := adminRequest(t, withToken.Addr, "POST", "/pools/p/backends/mail1/undrain", auth); code != 200 {
		t.Errorf("undrain with the token via a host name: %d", code)
	}
	auth["Origin"] = "http://evil.example"
	if code := adminRequest(t, withToken.Addr, "POST", "/pools/p/backends/mail1/undrain", auth); code != http.StatusForbidden {
		t.Errorf("undrain with the token from a foreign Origin: %d, want 403", code)
	}
}

// TestAdminUserNeedsToken (issue 10, point 10): with a token set,
// GET /users/{user} (who is where) needs it too; /status does not.
func TestAdminUserNeedsToken(t *testing.T) {
	f1 := newOpsBackend(t, "mail1", users(1, "u"), nil, 0)
	e := startProxy(t, opsConfig("", "mail1", f1.addr))
	ac := startAdmin(t, e, "tok")
	if code, _, _ := call(t, ac, "GET", "/users/u0", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /users/u0 without the token: %d, want 401", code)
	}
	if code, _, _ := call(t, ac, "GET", "/users/u0", "tok"); code != 200 {
		t.Errorf("GET /users/u0 with the token: %d", code)
	}
	if code, _, _ := call(t, ac, "GET", "/status", ""); code != 200 {
		t.Errorf("GET /status without the token: %d", code)
	}
	noToken := startAdmin(t, e, "")
	if code, _, _ := call(t, noToken, "GET", "/users/u0", ""); code != 200 {
		t.Errorf("GET /users/u0 with no token configured: %d", code)
	}
}
