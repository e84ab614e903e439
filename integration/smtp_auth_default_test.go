package integration

import (
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/internal/demo"
)

// TestSMTPAuthDefault (issue 10, point 9): a listener that does not set
// smtp_auth offers AUTH when its backend does, and only after STARTTLS
// where require_tls is set, so that mail clients find it; "off" still
// offers none, and a backend without AUTH gets none offered.
func TestSMTPAuthDefault(t *testing.T) {
	listeners := `
[[listener]]
name = "submission"
protocol = "smtp"
address = "127.0.0.1:1"
tls = "starttls"
require_tls = true
pool = "mx"

[[listener]]
name = "plain"
protocol = "smtp"
address = "127.0.0.1:2"
pool = "mx"

[[listener]]
name = "mx"
protocol = "smtp"
address = "127.0.0.1:3"
smtp_auth = "off"
pool = "mx"
`
	_, addr := smtpBackend(t, "mail1", demo.SMTPOptions{Users: map[string]string{"alice": "pw"}})
	e := startProxy(t, smtpConfig(listeners, smtpBack{"mail1", addr, ""}))

	before, err := gosmtp.Dial(e.Addr["submission"])
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	if err := before.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := before.Extension("AUTH"); ok {
		t.Errorf("submission offers AUTH before STARTTLS with require_tls")
	}
	c := dialSMTP(t, e, "submission")
	ok, mechs := c.Extension("AUTH")
	if !ok || !strings.Contains(mechs, "PLAIN") {
		t.Fatalf("submission without smtp_auth offers no AUTH after STARTTLS (%q): mail clients refuse to send", mechs)
	}
	if err := c.Auth(sasl.NewPlainClient("", "alice", "pw")); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	if _, err := sendSMTP(c, "alice@example.org", nil, []string{"b@example.org"}, nil, testMessage); err != nil {
		t.Fatalf("send after AUTH: %v", err)
	}
	c.Quit()
	if ok, _ := dialSMTP(t, e, "plain").Extension("AUTH"); !ok {
		t.Errorf("plain listener without require_tls offers no AUTH")
	}
	if ok, _ := dialSMTP(t, e, "mx").Extension("AUTH"); ok {
		t.Errorf(`smtp_auth = "off" offers AUTH`)
	}

	_, noAuth := smtpBackend(t, "mail2", demo.SMTPOptions{})
	e2 := startProxy(t, smtpConfig(listeners, smtpBack{"mail2", noAuth, ""}))
	if ok, _ := dialSMTP(t, e2, "plain").Extension("AUTH"); ok {
		t.Errorf("AUTH offered in front of a backend that has none")
	}
}
