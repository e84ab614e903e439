package integration

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"mailproxy/internal/testkit"
	"mailproxy/protocols"
)

// oauthErrJSON is the error challenge the fake backends send (RFC 7628
// §3.2.2); the tests check it reaches the client byte for byte.
const oauthErrJSON = `{"status":"invalid_token","schemes":"bearer","scope":"mail"}`

// oauthBackend is one fake server with IMAP, POP3 and SMTP listeners
// that accept OAUTHBEARER and XOAUTH2 (and nothing else) for the tokens it
// knows: the token is checked here, never by mailproxy. mechs are the
// mechanisms it announces; it records who logged in.
type oauthBackend struct {
	name   string
	tokens map[string]string // user -> the one valid token
	mechs  string            // announced, e.g. "OAUTHBEARER XOAUTH2"

	mu      sync.Mutex
	logins  map[string]int // "user proto" -> successful logins
	servers []*testkit.ConnServer
}

// stop closes the backend's listeners and connections: it is down.
func (b *oauthBackend) stop() {
	for _, s := range b.servers {
		s.Close()
	}
}

func newOAuthBackend(t *testing.T, name, mechs string, tokens map[string]string) (b *oauthBackend, imapAddr, pop3Addr, smtpAddr string) {
	t.Helper()
	b = &oauthBackend{name: name, tokens: tokens, mechs: mechs, logins: map[string]int{}}
	serve := func(h func(net.Conn, *bufio.Reader)) string {
		s := &testkit.ConnServer{Handle: func(c net.Conn) {
			c.SetDeadline(time.Now().Add(20 * time.Second))
			h(c, bufio.NewReader(c))
		}}
		b.servers = append(b.servers, s)
		return testkit.Serve(t, s)
	}
	return b, serve(b.imap), serve(b.pop3), serve(b.smtp)
}

func (b *oauthBackend) count(user, proto string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.logins[user+" "+proto]
}

// check decodes a client message and says whose it is and whether its
// token is that user's.
func (b *oauthBackend) check(mech, b64 string) (string, bool) {
	msg, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", false
	}
	user, err := protocols.ParseOAuth(mech, msg)
	if err != nil {
		return "", false
	}
	_, rest, _ := strings.Cut(string(msg), "auth=Bearer ")
	token, _, _ := strings.Cut(rest, "\x01")
	return user, b.tokens[user] != "" && b.tokens[user] == token
}

func (b *oauthBackend) ok(user, proto string) {
	b.mu.Lock()
	b.logins[user+" "+proto]++
	b.mu.Unlock()
}

// dummy is the client's reply to the error challenge each mechanism wants.
func dummy(mech string) string {
	if strings.EqualFold(mech, "OAUTHBEARER") {
		return "AQ==" // %x01
	}
	return ""
}

func readLine(r *bufio.Reader) (string, bool) {
	l, err := r.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err == nil
}

func (b *oauthBackend) imap(c net.Conn, r *bufio.Reader) {
	caps := "IMAP4rev1 SASL-IR ID"
	for _, m := range strings.Fields(b.mechs) {
		caps += " AUTH=" + m
	}
	fmt.Fprintf(c, "* OK [CAPABILITY %s] %s ready\r\n", caps, b.name)
	user := ""
	for {
		line, ok := readLine(r)
		if !ok {
			return
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		tag, verb := f[0], strings.ToUpper(f[1])
		switch {
		case verb == "LOGOUT":
			io.WriteString(c, "* BYE bye\r\n"+tag+" OK Logout completed\r\n")
			return
		case verb == "CAPABILITY":
			fmt.Fprintf(c, "* CAPABILITY %s\r\n%s OK done\r\n", caps, tag)
		case verb == "ID":
			fmt.Fprintf(c, "* ID NIL\r\n%s OK ID done\r\n", tag)
		case verb == "NOOP" && user != "":
			fmt.Fprintf(c, "%s OK %s at %s\r\n", tag, user, b.name)
		case verb == "AUTHENTICATE" && user == "" && len(f) >= 3 && strings.Contains(b.mechs, strings.ToUpper(f[2])):
			ir := ""
			if len(f) == 4 {
				ir = f[3]
			} else {
				io.WriteString(c, "+ \r\n")
				if ir, ok = readLine(r); !ok {
					return
				}
			}
			u, good := b.check(f[2], ir)
			if good {
				user = u
				b.ok(u, "imap")
				fmt.Fprintf(c, "%s OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n", tag)
				continue
			}
			fmt.Fprintf(c, "+ %s\r\n", base64.StdEncoding.EncodeToString([]byte(oauthErrJSON)))
			if l, ok := readLine(r); !ok || l != dummy(f[2]) {
				fmt.Fprintf(c, "%s BAD Expected the dummy reply\r\n", tag)
				continue
			}
			fmt.Fprintf(c, "%s NO [AUTHENTICATIONFAILED] Invalid token at %s\r\n", tag, b.name)
		default:
			fmt.Fprintf(c, "%s BAD unexpected\r\n", tag)
		}
	}
}

func (b *oauthBackend) pop3(c net.Conn, r *bufio.Reader) {
	fmt.Fprintf(c, "+OK %s ready\r\n", b.name)
	user := ""
	for {
		line, ok := readLine(r)
		if !ok {
			return
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch verb := strings.ToUpper(f[0]); {
		case verb == "QUIT":
			io.WriteString(c, "+OK bye\r\n")
			return
		case verb == "CAPA":
			fmt.Fprintf(c, "+OK\r\nSASL %s\r\nUIDL\r\n.\r\n", b.mechs)
		case verb == "NOOP" && user != "":
			fmt.Fprintf(c, "+OK %s at %s\r\n", user, b.name)
		case verb == "AUTH" && user == "" && len(f) == 3 && strings.Contains(b.mechs, strings.ToUpper(f[1])):
			u, good := b.check(f[1], f[2])
			if good {
				user = u
				b.ok(u, "pop3")
				fmt.Fprintf(c, "+OK Logged in at %s\r\n", b.name)
				continue
			}
			fmt.Fprintf(c, "+ %s\r\n", base64.StdEncoding.EncodeToString([]byte(oauthErrJSON)))
			if l, ok := readLine(r); !ok || l != dummy(f[1]) {
				io.WriteString(c, "-ERR Expected the dummy reply\r\n")
				continue
			}
			fmt.Fprintf(c, "-ERR [AUTH] Invalid token at %s\r\n", b.name)
		default:
			io.WriteString(c, "-ERR unexpected\r\n")
		}
	}
}

func (b *oauthBackend) smtp(c net.Conn, r *bufio.Reader) {
	fmt.Fprintf(c, "220 %s ESMTP\r\n", b.name)
	user := ""
	for {
		line, ok := readLine(r)
		if !ok {
			return
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			io.WriteString(c, "500 5.5.2 empty\r\n")
			continue
		}
		switch verb := strings.ToUpper(f[0]); {
		case verb == "QUIT":
			io.WriteString(c, "221 2.0.0 bye\r\n")
			return
		case verb == "EHLO":
			fmt.Fprintf(c, "250-%s\r\n250-AUTH %s\r\n250 8BITMIME\r\n", b.name, b.mechs)
		case verb == "RSET" || verb == "NOOP":
			io.WriteString(c, "250 2.0.0 ok\r\n")
		case verb == "MAIL" && user != "":
			fmt.Fprintf(c, "250 2.1.0 %s at %s\r\n", user, b.name)
		case verb == "MAIL":
			io.WriteString(c, "530 5.7.0 Authentication required\r\n")
		case verb == "AUTH" && user == "" && len(f) == 3 && strings.Contains(b.mechs, strings.ToUpper(f[1])):
			u, good := b.check(f[1], f[2])
			if good {
				user = u
				b.ok(u, "smtp")
				io.WriteString(c, "235 2.7.0 Authentication successful\r\n")
				continue
			}
			fmt.Fprintf(c, "334 %s\r\n", base64.StdEncoding.EncodeToString([]byte(oauthErrJSON)))
			if l, ok := readLine(r); !ok || l != dummy(f[1]) {
				io.WriteString(c, "501 5.5.2 Expected the dummy reply\r\n")
				continue
			}
			fmt.Fprintf(c, "535 5.7.8 Invalid token at %s\r\n", b.name)
		default:
			io.WriteString(c, "502 5.5.2 unexpected\r\n")
		}
	}
}
