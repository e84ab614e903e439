package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// ppListener is cfgBase's listener with proxy_protocol on, and more keys.
func ppListener(extra string) string {
	return cfgReplaced(`pool = "main"
`, "pool = \"main\"\nproxy_protocol = true\n"+extra)
}

func TestProxyProtocolConfig(t *testing.T) {
	c, err := Parse([]byte(ppListener("")), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Listeners[0].ProxyProtocolTrusted; !slices.Equal(got, []string{"127.0.0.0/8", "::1"}) {
		t.Errorf("default proxy_protocol_trusted %q, want loopback", got)
	}
	c, err = Parse([]byte(ppListener(`proxy_protocol_trusted = ["192.0.2.10", "198.51.100.0/24", "2001:db8::/32"]`)), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Warnings(); len(w) > 0 {
		t.Errorf("warnings %q", w)
	}

	for _, tc := range []struct {
		name, doc, key, msg string
	}{
		{"bad network", ppListener(`proxy_protocol_trusted = ["192.0.2.0/24", "10.0.0.300"]`),
			"listener[0].proxy_protocol_trusted[1]", "not an address or a network"},
		{"host bits", ppListener(`proxy_protocol_trusted = ["192.0.2.10/24"]`),
			"listener[0].proxy_protocol_trusted[0]", `write "192.0.2.0/24"`},
		{"zone", ppListener(`proxy_protocol_trusted = ["fe80::1%eth0"]`),
			"listener[0].proxy_protocol_trusted[0]", "not an address"},
		{"empty", ppListener(`proxy_protocol_trusted = []`),
			"listener[0].proxy_protocol_trusted", "every connection would be refused"},
		{"without proxy_protocol", cfgReplaced(`pool = "main"
`, "pool = \"main\"\nproxy_protocol_trusted = [\"192.0.2.10\"]\n"),
			"listener[0].proxy_protocol_trusted", "no effect without proxy_protocol = true"},
		{"not a list", ppListener(`proxy_protocol_trusted = "192.0.2.10"`),
			"listener[0].proxy_protocol_trusted", "must be an array"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), "test.toml")
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a Error", err)
			}
			for _, p := range ce.Problems {
				if p.Key == tc.key && strings.Contains(p.Msg, tc.msg) && p.Line > 0 {
					return
				}
			}
			t.Errorf("no problem %s: ...%s... with a line in:\n%v", tc.key, tc.msg, err)
		})
	}

	c, err = Parse([]byte(ppListener(`proxy_protocol_trusted = ["0.0.0.0/0"]`)), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(c.Warnings(), "\n"); !strings.Contains(w, "listener[0].proxy_protocol_trusted[0]") || !strings.Contains(w, "trusts every address") {
		t.Errorf("no warning for 0.0.0.0/0: %q", w)
	}
}
