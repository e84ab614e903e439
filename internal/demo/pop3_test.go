package demo

import (
	"bufio"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"mailproxy/internal/testkit"
)

// pop3Dialog connects to s and checks each exchange: a command (without
// CRLF; "" reads without sending) and the exact reply lines.
func pop3Dialog(t *testing.T, addr string, steps [][]string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	var greeting string
	for _, step := range steps {
		cmd := strings.ReplaceAll(step[0], "{apop}", apop(greeting, "pw"))
		if cmd != "" {
			io.WriteString(c, cmd+"\r\n")
		}
		for _, want := range step[1:] {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%q: %v", cmd, err)
			}
			got = strings.TrimSuffix(got, "\r\n")
			if greeting == "" {
				greeting = got
			}
			if ok, _ := regexp.MatchString("^"+want+"$", got); !ok {
				t.Fatalf("%q: got %q, want %q", cmd, got, want)
			}
		}
	}
}

func apop(greeting, password string) string {
	sum := md5.Sum([]byte(regexp.MustCompile(`<.*>`).FindString(greeting) + password))
	return hex.EncodeToString(sum[:])
}

func TestPOP3Server(t *testing.T) {
	s := NewPOP3Server("m1", map[string]string{"alice": "pw", "bob": "pw"}, nil)
	s.Add("alice", "Subject: a\n\nbody\n.dot\n")
	s.Add("alice", "Subject: b\r\n\r\n1\r\n2\r\n3\r\n")
	tr := NewTracker()
	s.Tracker = tr
	addr := testkit.Serve(t, s)
	pop3Dialog(t, addr, [][]string{
		{"", `\+OK m1 ready\. <\d+\.\d+@m1>`},
		{"CAPA", `\+OK`, "CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "USER", "SASL PLAIN", `\.`},
		{"STAT", `-ERR Unknown command\.`},
		{"APOP alice 0000", `-ERR \[AUTH\] Authentication failed\.`},
		{"APOP alice {apop}", `\+OK Logged in\.`},
		{"STAT", `\+OK 2 49`},
		{"LIST", `\+OK 2 messages:`, "1 26", "2 23", `\.`},
		{"UIDL 2", `\+OK 2 m1-00000002`},
		{"RETR 1", `\+OK 26 octets`, "Subject: a", "", "body", `\.\.dot`, `\.`},
		{"TOP 2 1", `\+OK`, "Subject: b", "", "1", `\.`},
		{"DELE 1", `\+OK Marked to be deleted\.`},
		{"RETR 1", `-ERR Message is deleted\.`},
		{"RSET", `\+OK`},
		{"DELE 2", `\+OK Marked to be deleted\.`},
		{"LIST 3", `-ERR There's no message 3\.`},
		{"QUIT", `\+OK Logging out\.`},
	})
	if m := s.Messages("alice"); len(m) != 1 || !strings.HasPrefix(m[0], "Subject: a\r\n") {
		t.Fatalf("after QUIT: %q", m)
	}
	if s.Logins() != 1 || len(tr.Sessions("alice")) != 0 {
		t.Fatalf("logins %d, sessions %v", s.Logins(), tr.Sessions("alice"))
	}
}

func TestPOP3ServerLogins(t *testing.T) {
	s := NewPOP3Server("m1", map[string]string{"alice": "pw"}, nil)
	s.XCLIENT = true
	addr := testkit.Serve(t, s)
	plain := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw"))
	pop3Dialog(t, addr, [][]string{
		{"", `\+OK \[XCLIENT\] m1 ready\. <.*>`},
		{"XCLIENT ADDR=192.0.2.7 PORT=4000", `\+OK Updated`},
		{"AUTH", `\+OK`, "PLAIN", `\.`},
		{"AUTH PLAIN", `\+ `},
		{"*", `-ERR Authentication aborted by client\.`},
		{"USER alice", `\+OK`},
		{"PASS nope", `-ERR \[AUTH\] Authentication failed\.`},
		{"AUTH PLAIN " + plain, `\+OK Logged in\.`},
		{"CAPA", `\+OK`, "CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", `\.`},
	})
	if f := s.Forwarded(); len(f) != 1 || f[0] != "192.0.2.7" {
		t.Fatalf("forwarded %q", f)
	}
	s.RejectLogins.Store(true)
	pop3Dialog(t, addr, [][]string{
		{"", `\+OK .*`},
		{"USER alice", `\+OK`},
		{"PASS pw", `-ERR \[SYS/PERM\] Logins are disabled on m1\.`},
	})
}

func TestPOP3ServerInUse(t *testing.T) {
	s := NewPOP3Server("m1", map[string]string{"alice": "pw"}, nil)
	addr := testkit.Serve(t, s)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	r.ReadString('\n')
	io.WriteString(c, "USER alice\r\nPASS pw\r\n")
	r.ReadString('\n')
	if l, _ := r.ReadString('\n'); l != "+OK Logged in.\r\n" {
		t.Fatalf("first login: %q", l)
	}
	pop3Dialog(t, addr, [][]string{
		{"", `\+OK .*`},
		{"USER alice", `\+OK`},
		{"PASS pw", `-ERR \[IN-USE\] Mailbox is locked by another POP3 session\.`},
	})
}
