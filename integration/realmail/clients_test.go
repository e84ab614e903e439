package realmail

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Python's clients, as a script per library. argv: host port user token...
// Every script checks TLS against the harness CA (REALMAIL_TLS_CERT).
const (
	pyIMAP = `
import imaplib, ssl, sys
host, port, ca, user, tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
c = imaplib.IMAP4(host, port, timeout=20)
c.starttls(ssl.create_default_context(cafile=ca))
c.login(user, "pw")
c.select("INBOX", readonly=True)
for t in tokens:
    typ, data = c.uid("SEARCH", "HEADER", "X-Realmail-Token", t)
    uids = data[0].split()
    assert typ == "OK" and len(uids) == 1, (t, typ, data)
    typ, data = c.uid("FETCH", uids[0], "(BODY.PEEK[])")
    assert typ == "OK" and ("token " + t).encode() in data[0][1], (t, data)
    print("imaplib found", t, "uid", uids[0].decode())
c.logout()
`
	pyPOP = `
import poplib, ssl, sys
host, port, ca, user, tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
c = poplib.POP3(host, port, timeout=20)
c.stls(ssl.create_default_context(cafile=ca))
c.user(user)
c.pass_("pw")
found = set()
for entry in c.list()[1]:
    n = int(entry.split()[0])
    text = b"\n".join(c.retr(n)[1])
    found |= {t for t in tokens if ("token " + t).encode() in text}
c.quit()
assert found == set(tokens), ("missing", set(tokens) - found)
print("poplib found", " ".join(sorted(found)))
`
	pySMTP = `
import smtplib, ssl, sys
host, port, ca, user, rcpt, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
with smtplib.SMTP(host, port, local_hostname="client.realmail.test", timeout=20) as s:
    s.starttls(context=ssl.create_default_context(cafile=ca))
    s.login(user, "pw")
    refused = s.sendmail("sender@example.test", [rcpt], msg.encode())
    assert not refused, refused
print("smtplib sent")
`
)

var curlUIDRE = regexp.MustCompile(`\* SEARCH (\d+)`)

// TestRealClients is issue 7 point 5: curl (imap, imaps, pop3s, smtp with
// STARTTLS), Python's smtplib, imaplib and poplib, and swaks, each through
// mailproxy against the real servers. The senders each send one message
// to user10; the readers each find all three.
func TestRealClients(t *testing.T) {
	h := need(t)
	p := startProxy(t, h, proxyOptions{})
	const user = "user10"
	ca := h.get(t, "REALMAIL_TLS_CERT")
	port := func(listener string) string {
		_, port, _ := net.SplitHostPort(p.Addr[listener])
		return port
	}
	tokens := map[string]string{"swaks": newToken(), "smtplib": newToken(), "curl-smtp": newToken()}

	t.Run("send", func(t *testing.T) {
		t.Run("swaks", func(t *testing.T) {
			p.needProto(t, "smtp")
			tok := tokens["swaks"]
			out, err := run(t, 30*time.Second, "swaks", "--server", "127.0.0.1", "--port", port("smtp"),
				"--ehlo", "client.realmail.test", "--from", "sender@example.test", "--to", user+"@example.test",
				"--tls", "--tls-verify", "--tls-ca-path", ca,
				"--header", "Subject: realmail "+tok, "--header", "X-Realmail-Token: "+tok, "--body", "token "+tok)
			if err != nil || !strings.Contains(out, "<~  250 ") {
				t.Fatalf("swaks: %v\n%s", err, out)
			}
		})
		t.Run("python-smtplib", func(t *testing.T) {
			p.needProto(t, "smtp")
			tok := tokens["smtplib"]
			out, err := run(t, 30*time.Second, "python3", "-c", pySMTP, "127.0.0.1", port("submission"), ca,
				user, user+"@example.test", message(tok, user+"@example.test"))
			if err != nil {
				t.Fatalf("smtplib (submission, STARTTLS, AUTH): %v\n%s", err, out)
			}
		})
		t.Run("curl-smtp-starttls", func(t *testing.T) {
			p.needProto(t, "smtp")
			tok := tokens["curl-smtp"]
			f := filepath.Join(t.TempDir(), "msg.eml")
			os.WriteFile(f, []byte(message(tok, user+"@example.test")), 0o600)
			out, err := run(t, 30*time.Second, "curl", "-sS", "-v", "--max-time", "20", "--ssl-reqd", "--cacert", ca,
				"smtp://127.0.0.1:"+port("smtp")+"/client.realmail.test",
				"--mail-from", "sender@example.test", "--mail-rcpt", user+"@example.test", "-T", f)
			if err != nil || !strings.Contains(out, "STARTTLS") {
				t.Fatalf("curl smtp: %v\n%s", err, out)
			}
		})
	})
	// Without an SMTP handler the readers still run, on messages handed to
	// Postfix directly.
	for name, tok := range tokens {
		if p.has("smtp") {
			break
		}
		out, err := run(t, 30*time.Second, "swaks", "--server", h.addr(t, "POSTFIX_SMTP_PORT"),
			"--to", user+"@example.test", "--header", "X-Realmail-Token: "+tok, "--body", "token "+tok)
		if err != nil {
			t.Fatalf("direct delivery for %s: %v\n%s", name, err, out)
		}
	}
	var all []string
	for _, tok := range tokens {
		all = append(all, tok)
	}
	h.delivered(t, tokens["swaks"], user)
	h.delivered(t, tokens["smtplib"], user)
	h.delivered(t, tokens["curl-smtp"], user)

	curlRead := func(t *testing.T, scheme, listener, tok string) {
		base := scheme + "://127.0.0.1:" + port(listener) + "/INBOX"
		out, err := run(t, 30*time.Second, "curl", "-sS", "--max-time", "20", "--cacert", ca, "-u", user+":pw",
			base, "-X", "UID SEARCH HEADER X-Realmail-Token "+tok)
		m := curlUIDRE.FindStringSubmatch(out)
		if err != nil || m == nil {
			t.Fatalf("curl %s UID SEARCH: %v\n%s", scheme, err, out)
		}
		out, err = run(t, 30*time.Second, "curl", "-sS", "--max-time", "20", "--cacert", ca, "-u", user+":pw", base+";UID="+m[1])
		if err != nil || !strings.Contains(out, "token "+tok) {
			t.Fatalf("curl %s fetch UID %s: %v\n%s", scheme, m[1], err, out)
		}
	}
	t.Run("read", func(t *testing.T) {
		t.Run("curl-imap", func(t *testing.T) { curlRead(t, "imap", "imap", tokens["swaks"]) })
		t.Run("curl-imaps", func(t *testing.T) { curlRead(t, "imaps", "imaps", tokens["smtplib"]) })
		t.Run("curl-pop3s", func(t *testing.T) {
			p.needProto(t, "pop3")
			base := "pop3s://127.0.0.1:" + port("pop3s") + "/"
			list, err := run(t, 30*time.Second, "curl", "-sS", "--max-time", "20", "--cacert", ca, "-u", user+":pw", base)
			if err != nil {
				t.Fatalf("curl pop3s LIST: %v\n%s", err, list)
			}
			for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
				n, _, _ := strings.Cut(strings.TrimSpace(line), " ")
				msg, err := run(t, 30*time.Second, "curl", "-sS", "--max-time", "20", "--cacert", ca, "-u", user+":pw", base+n)
				if err != nil {
					t.Fatalf("curl pop3s RETR %s: %v\n%s", n, err, msg)
				}
				if strings.Contains(msg, "token "+tokens["curl-smtp"]) {
					return
				}
			}
			t.Fatalf("curl pop3s: no message with token %s in:\n%s", tokens["curl-smtp"], list)
		})
		t.Run("python-imaplib", func(t *testing.T) {
			out, err := run(t, 30*time.Second, "python3", append([]string{"-c", pyIMAP, "127.0.0.1", port("imap"), ca, user}, all...)...)
			if err != nil {
				t.Fatalf("imaplib (STARTTLS): %v\n%s", err, out)
			}
		})
		t.Run("python-poplib", func(t *testing.T) {
			p.needProto(t, "pop3")
			out, err := run(t, 30*time.Second, "python3", append([]string{"-c", pyPOP, "127.0.0.1", port("pop3"), ca, user}, all...)...)
			if err != nil {
				t.Fatalf("poplib (STLS): %v\n%s", err, out)
			}
		})
	})
}
