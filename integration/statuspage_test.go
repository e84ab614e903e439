package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"mailproxy/internal/testkit"
)

// TestStatusPage drives the admin status page (GET /) in a real headless
// chromium: it renders the backends of a running proxy with their health,
// a drain without the token is refused on the page, and with the token
// pasted into its field, clicking drain drains the backend (seen in
// /status) and the button turns to undrain.
func TestStatusPage(t *testing.T) {
	bin := chromium(t)
	b1, b2 := newOpsBackend(t, "mail1", users(2, "u"), nil, 0), newOpsBackend(t, "mail2", users(2, "u"), nil, 0)
	e := startProxy(t, fmt.Sprintf(`
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:1"
pool = "main"
[[pool]]
name = "main"
[[pool.backend]]
name = "mail1"
imap = %q
[[pool.backend]]
name = "mail2"
imap = %q
`, b1.addr, b2.addr))
	api := startAdmin(t, e, "page-token")

	br := startBrowser(t, bin)
	page := br.open(t, api.Addr+"/")
	rendered := func(backend string) string {
		var state string
		page.eval(t, fmt.Sprintf(`(document.querySelector('tr[data-backend=%q] td[data-state]') || {}).textContent || ""`, backend), &state)
		return state
	}
	waitFor(t, 10*time.Second, "the page to render both backends up", func() bool {
		return rendered("mail1") == "up" && rendered("mail2") == "up"
	})
	var text string
	page.eval(t, `document.body.innerText`, &text)
	for _, want := range []string{"pool main", "imap up", "role: active", "imap", "serving"} {
		if !strings.Contains(text, want) {
			t.Errorf("the page lacks %q:\n%s", want, text)
		}
	}

	// No token: the API refuses and the page says so.
	page.click(t, `tr[data-backend="mail2"] button[data-action="drain"]`)
	waitFor(t, 10*time.Second, "the page to show the refusal", func() bool {
		var msg string
		page.eval(t, `document.getElementById("msg").textContent`, &msg)
		return strings.Contains(msg, "missing or wrong bearer token")
	})
	if st, _ := api.Status(context.Background()); st.Pools[0].Backends[1].Draining {
		t.Fatal("a drain without the token went through")
	}

	// Paste the token, click drain.
	page.eval(t, `document.getElementById("token").focus()`, nil)
	page.call(t, "Input.insertText", map[string]any{"text": "page-token"}, nil)
	page.click(t, `tr[data-backend="mail2"] button[data-action="drain"]`)
	waitFor(t, 10*time.Second, "mail2 to drain", func() bool {
		st, err := api.Status(context.Background())
		return err == nil && st.Pools[0].Backends[1].Draining && !st.Pools[0].Backends[0].Draining
	})
	waitFor(t, 10*time.Second, "the page to offer undrain", func() bool {
		var n int
		page.eval(t, `document.querySelectorAll('tr[data-backend="mail2"] button[data-action="undrain"]').length`, &n)
		return n == 1 && rendered("mail2") == "draining"
	})
	var stored string
	page.eval(t, `sessionStorage.getItem("mailproxy-admin-token")`, &stored)
	if stored != "page-token" {
		t.Errorf("the token is kept as %q in sessionStorage", stored)
	}
	page.click(t, `tr[data-backend="mail2"] button[data-action="undrain"]`)
	waitFor(t, 10*time.Second, "mail2 to undrain", func() bool {
		st, err := api.Status(context.Background())
		return err == nil && !st.Pools[0].Backends[1].Draining
	})
}

// chromium finds Debian's chromium; without it the test skips, except
// under CI=true, where install.sh must have installed it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium under CI=true: integration/realmail/install.sh installs it")
	}
	t.Skip("no chromium here (CI installs it with integration/realmail/install.sh)")
	return ""
}

// browser is a headless chromium driven over the DevTools protocol on
// --remote-debugging-pipe: NUL-terminated JSON messages, requests on fd 3,
// answers and events on fd 4.
type browser struct {
	w    io.Writer
	mu   sync.Mutex
	next int
	wait map[int]chan cdpMessage
}

type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    any             `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

func startBrowser(t *testing.T, bin string) *browser {
	t.Helper()
	toChrome, ourEnd, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fromChrome, theirEnd, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "about:blank")
	cmd.ExtraFiles = []*os.File{toChrome, theirEnd} // fd 3: it reads, fd 4: it writes
	logs := &testkit.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toChrome.Close()
	theirEnd.Close()
	done := make(chan struct{})
	t.Cleanup(func() {
		ourEnd.Close()
		cancel()
		<-done
		if t.Failed() {
			t.Logf("chromium output:\n%s", logs.String())
		}
	})
	b := &browser{w: ourEnd, wait: map[int]chan cdpMessage{}}
	go func() {
		defer close(done)
		defer cmd.Wait()
		r := bufio.NewReader(fromChrome)
		for {
			raw, err := r.ReadBytes(0)
			if err != nil {
				return
			}
			var m cdpMessage
			if json.Unmarshal(raw[:len(raw)-1], &m) != nil || m.ID == 0 {
				continue // an event
			}
			b.mu.Lock()
			ch := b.wait[m.ID]
			delete(b.wait, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		}
	}()
	return b
}

// call sends one command (to a page's session when session is set) and
// decodes its result into out.
func (b *browser) call(t *testing.T, session, method string, params, out any) {
	t.Helper()
	b.mu.Lock()
	b.next++
	id := b.next
	ch := make(chan cdpMessage, 1)
	b.wait[id] = ch
	b.mu.Unlock()
	msg, err := json.Marshal(cdpMessage{ID: id, SessionID: session, Method: method, Params: params})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.w.Write(append(msg, 0)); err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			t.Fatalf("%s: %s", method, m.Error.Message)
		}
		if out != nil {
			if err := json.Unmarshal(m.Result, out); err != nil {
				t.Fatalf("%s: %v", method, err)
			}
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no answer from chromium within 20s", method)
	}
}

// tab is one page of the browser.
type tab struct {
	b       *browser
	session string
}

func (b *browser) open(t *testing.T, url string) *tab {
	t.Helper()
	var target struct{ TargetID string }
	b.call(t, "", "Target.createTarget", map[string]any{"url": url}, &target)
	var att struct{ SessionID string }
	b.call(t, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att)
	return &tab{b: b, session: att.SessionID}
}

func (p *tab) call(t *testing.T, method string, params, out any) {
	t.Helper()
	p.b.call(t, p.session, method, params, out)
}

// eval runs a JavaScript expression in the page and decodes its value.
func (p *tab) eval(t *testing.T, expr string, out any) {
	t.Helper()
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	p.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res)
	if res.ExceptionDetails != nil {
		t.Fatalf("eval %s: %s", expr, res.ExceptionDetails.Text)
	}
	if out != nil && len(res.Result.Value) > 0 {
		if err := json.Unmarshal(res.Result.Value, out); err != nil {
			t.Fatalf("eval %s: %v (%s)", expr, err, res.Result.Value)
		}
	}
}

// click presses and releases the mouse in the middle of the element that
// selector finds, as a user would.
func (p *tab) click(t *testing.T, selector string) {
	t.Helper()
	var at struct{ X, Y float64 }
	waitFor(t, 10*time.Second, "element "+selector, func() bool {
		var ok bool
		p.eval(t, fmt.Sprintf(`!!document.querySelector(%q)`, selector), &ok)
		return ok
	})
	p.eval(t, fmt.Sprintf(`(() => { const r = document.querySelector(%q).getBoundingClientRect(); return {X: r.x + r.width/2, Y: r.y + r.height/2}; })()`, selector), &at)
	for _, typ := range []string{"mousePressed", "mouseReleased"} {
		p.call(t, "Input.dispatchMouseEvent", map[string]any{"type": typ, "x": at.X, "y": at.Y, "button": "left", "clickCount": 1}, nil)
	}
}
