package config

import (
	"strings"
	"testing"
)

// storeCfg has an LMTP and a ManageSieve listener and a backend for each.
const storeCfg = `
[[listener]]
name = "lmtp"
protocol = "lmtp"
address = "/run/mailproxy/lmtp"
pool = "main"

[[listener]]
name = "sieve"
protocol = "managesieve"
address = "127.0.0.1:4190"
tls = "starttls"
require_tls = true
pool = "main"

[[pool]]
name = "main"

  [[pool.backend]]
  name = "mail1"
  lmtp = "127.0.0.1:24"
  managesieve = "127.0.0.1:4190"
`

func TestStoreProtocolsAccepted(t *testing.T) {
	c, err := Parse([]byte("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"+storeCfg), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Pools[0].Backends[0]
	if b.LMTP != "127.0.0.1:24" || b.ManageSieve != "127.0.0.1:4190" || c.Listeners[0].Protocol != "lmtp" {
		t.Fatalf("parsed %+v %+v", c.Listeners, b)
	}
}

func TestStoreProtocolsRefused(t *testing.T) {
	for _, tc := range []struct{ name, old, new, want string }{
		{"unix socket for managesieve", `address = "127.0.0.1:4190"`, `address = "/run/sieve"`, "listener[1].address: a unix socket is for lmtp listeners only"},
		{"proxy_protocol on a unix socket", `address = "/run/mailproxy/lmtp"`, "address = \"/run/mailproxy/lmtp\"\nproxy_protocol = true", "listener[0].proxy_protocol: needs a TCP address"},
		{"relative socket path", `address = "/run/mailproxy/lmtp"`, `address = "run/lmtp"`, `listener[0].address: "run/lmtp" is not host:port`},
		{"no lmtp backend", `lmtp = "127.0.0.1:24"`, ``, `listener[0].pool: pool "main" has no backend with a lmtp address`},
		{"bad managesieve address", `managesieve = "127.0.0.1:4190"`, `managesieve = "mail1"`, `pool[0].backend[0].managesieve: "mail1" is not host:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n" + strings.Replace(storeCfg, tc.old, tc.new, 1)
			_, err := Parse([]byte(text), "test.toml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
