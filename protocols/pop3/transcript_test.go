package pop3

import (
	"bufio"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/transcript"
)

// The transcripts in the repository's testdata/transcripts are what real
// POP3 clients sent to Dovecot (see the README there): the client side is
// replayed against mailproxy's front, and the replies compared.

// loadTranscripts reads every recorded POP3 connection.
func loadTranscripts(tb testing.TB) []transcript.Conn {
	tb.Helper()
	conns, err := transcript.Load("*-pop3.txt")
	if err != nil {
		tb.Fatal(err)
	}
	return conns
}

// seedMessage is the 164-octet message every transcript user had.
func seedMessage(user string) string {
	return fmt.Sprintf("From: seed <seed@mail.test>\r\nTo: %s@mail.test\r\nSubject: hello\r\n"+
		"Message-ID: <seed-%s@mail.test>\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n\r\nOne short line.\r\n", user, user)
}

// response is one reply as a client reads it: the first line and, for a
// multi-line +OK, the lines of the body.
type response struct {
	first string
	body  []string
}

// multiLine reports whether cmd's +OK reply has a body (RFC 1939, 2449).
func multiLine(cmd string) bool {
	verb, arg, _ := strings.Cut(cmd, " ")
	switch strings.ToUpper(verb) {
	case "CAPA", "RETR", "TOP":
		return true
	case "LIST", "UIDL", "AUTH":
		return arg == ""
	}
	return false
}

// readResponse reads cmd's reply from r; a reply to a SASL response line
// (sasl) and a continuation ("+ ...") are one line.
func readResponse(r *bufio.Reader, cmd string, sasl bool) (response, error) {
	first, err := r.ReadString('\n')
	if err != nil {
		return response{}, err
	}
	resp := response{first: strings.TrimSuffix(first, "\r\n")}
	if sasl || !strings.HasPrefix(resp.first, "+OK") || !multiLine(cmd) {
		return resp, nil
	}
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return resp, err
		}
		l = strings.TrimSuffix(l, "\r\n")
		if l == "." {
			return resp, nil
		}
		resp.body = append(resp.body, strings.TrimPrefix(l, "."))
	}
}

func TestTranscripts(t *testing.T) {
	users := map[string]string{}
	for i := 860; i < 890; i++ {
		users[fmt.Sprintf("user%d", i)] = "pw"
	}
	for _, tr := range loadTranscripts(t) {
		t.Run(tr.String(), func(t *testing.T) {
			srv, addr := demoBackend(t, users, nil)
			for u := range users {
				srv.Add(u, seedMessage(u))
			}
			replay(t, newEnv(t, addr), tr)
		})
	}
}

// replay sends the transcript's client lines one by one and compares each
// reply with the recorded one.
func replay(t *testing.T, e *env, tr transcript.Conn) {
	c, _ := e.connect()
	c.line() // our greeting, not Dovecot's
	recorded := bufio.NewReader(strings.NewReader(tr.ServerBytes()))
	recorded.ReadString('\n')
	loggedIn, sasl := false, false
	lines := strings.SplitAfter(tr.ClientBytes(), "\r\n")
	for _, raw := range lines {
		if raw == "" {
			continue
		}
		cmd := strings.TrimSuffix(raw, "\r\n")
		if sasl {
			cmd = "(SASL response)"
		}
		want, err := readResponse(recorded, cmd, sasl)
		if err != nil {
			t.Fatalf("transcript has no reply to %q: %v", raw, err)
		}
		c.send(raw)
		c.c.SetReadDeadline(time.Now().Add(timeout))
		got, err := readResponse(c.r, cmd, sasl)
		if err != nil {
			t.Fatalf("reply to %q: %v", raw, err)
		}
		compare(t, cmd, loggedIn, got, want)
		sasl = strings.HasPrefix(got.first, "+ ")
		if !loggedIn && got.first == "+OK Logged in." {
			loggedIn = true
		}
		if strings.EqualFold(cmd, "STLS") && tr.TLS {
			afterSTLS(t, c)
			return
		}
	}
	if strings.HasSuffix(tr.ClientBytes(), "QUIT\r\n") {
		c.closed()
	}
}

// compare checks a reply against the recorded one: the same status, the
// same SASL challenges, and after login the same mailbox data (our fake
// has its own UIDs and texts).
func compare(t *testing.T, cmd string, loggedIn bool, got, want response) {
	t.Helper()
	word := func(s string) string { return strings.Fields(s + " x")[0] }
	if word(got.first) != word(want.first) {
		t.Fatalf("%q: got %q, recorded %q", cmd, got.first, want.first)
	}
	verb, arg, _ := strings.Cut(strings.ToUpper(cmd), " ")
	switch {
	case strings.HasPrefix(want.first, "+ ") && got.first != want.first:
		t.Errorf("%q: challenge %q, recorded %q", cmd, got.first, want.first)
	case verb == "CAPA" && !loggedIn:
		for _, c := range want.body {
			if !slices.Contains(got.body, c) {
				t.Errorf("CAPA before login lacks %q: %q", c, got.body)
			}
		}
	case !loggedIn:
	case verb == "STAT" || verb == "LIST" && arg != "":
		if got.first != want.first {
			t.Errorf("%q: got %q, recorded %q", cmd, got.first, want.first)
		}
	case verb == "UIDL":
		if len(got.body) != len(want.body) {
			t.Errorf("UIDL: got %q, recorded %q", got.body, want.body)
		}
	default:
		if !slices.Equal(got.body, want.body) {
			t.Errorf("%q: got %q, recorded %q", cmd, got.body, want.body)
		}
	}
}

// afterSTLS finishes a session whose transcript ends at the handshake:
// TLS up, no STLS offered any more, a login works.
func afterSTLS(t *testing.T, c *client) {
	c.upgrade()
	caps := c.capa()
	if slices.Contains(caps, "STLS") || !slices.Contains(caps, "USER") {
		t.Fatalf("CAPA after STLS: %q", caps)
	}
	c.cmd("USER user870")
	if got := c.cmd("PASS pw"); got != "+OK Logged in." {
		t.Fatalf("login after STLS: %q", got)
	}
	if got := c.cmd("STAT"); got != "+OK 1 164" {
		t.Fatalf("STAT after STLS: %q", got)
	}
}

// The transcripts must really hold what the tests rely on.
func TestTranscriptsLoaded(t *testing.T) {
	trs := loadTranscripts(t)
	var stls, plain int
	for _, tr := range trs {
		if tr.TLS {
			stls++
		} else {
			plain++
		}
	}
	if len(trs) < 15 || stls < 5 || plain < 9 {
		t.Fatalf("%d transcripts, %d with STLS, %d plain", len(trs), stls, plain)
	}
	if got := len(seedMessage("user873")); got != 164 {
		t.Fatalf("seed message is %d octets, recorded 164", got)
	}
}
