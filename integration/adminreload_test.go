package integration

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"mailproxy/proxy/admin"
)

// TestAdminReload: POST /reload needs the token, refuses cross-origin
// requests like every POST, answers 200 with the notes when the reload
// applies and 422 with the reason when it is refused.
func TestAdminReload(t *testing.T) {
	b1 := newOpsBackend(t, "mail1", users(1, "u"), nil, 0)
	e := startProxy(t, `
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "main"
[[pool]]
name = "main"
[[pool.backend]]
name = "mail1"
imap = "`+b1.addr+`"
`)
	calls := 0
	var fail error
	api := admin.New(e.Srv, admin.Options{Token: "tok", Logger: slog.New(slog.DiscardHandler), Reload: func(context.Context) ([]string, error) {
		calls++
		if fail != nil {
			return nil, fail
		}
		return []string{"[admin] changed; it applies at the next restart"}, e.Srv.Reload(e.Cfg)
	}})
	hs := httptest.NewServer(api.Handler())
	defer hs.Close()
	post := func(path, token string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, hs.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, _ := post("/reload", "", nil); code != http.StatusUnauthorized || calls != 0 {
		t.Errorf("reload without the token: %d, %d calls", code, calls)
	}
	for _, h := range []map[string]string{
		{"Origin": "http://evil.example"},
		{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
	} {
		if code, body := post("/reload", "tok", h); code != http.StatusForbidden || !strings.Contains(body, "cross-site") {
			t.Errorf("cross-origin reload %v: %d %s", h, code, body)
		}
		if code, _ := post("/pools/main/backends/mail1/drain", "tok", h); code != http.StatusForbidden {
			t.Errorf("cross-origin drain %v: %d", h, code)
		}
	}
	if calls != 0 || e.Srv.Pool("main").Status()[0].Draining {
		t.Fatal("a cross-origin request went through")
	}
	c := &admin.Client{Addr: hs.URL, Token: "tok"}
	res, err := c.Reload(context.Background())
	if err != nil || !res.Reloaded || len(res.Notes) != 1 || calls != 1 {
		t.Errorf("reload: %+v %v", res, err)
	}
	if code, _ := post("/reload", "tok", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": hs.URL}); code != http.StatusOK {
		t.Errorf("a same-origin reload (the status page) got %d", code)
	}
	fail = errors.New("line 3: listener[0].name: must be a string")
	_, err = c.Reload(context.Background())
	var ae *admin.APIError
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(ae.Message, "listener[0].name") {
		t.Errorf("a refused reload: %v", err)
	}
}
