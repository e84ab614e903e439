package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const exampleConfigPath = "../../mailproxy.toml.example"

// cfgBase is the smallest valid configuration; cases edit or extend it.
const cfgBase = `[tls]
cert = "cert.pem"
key = "key.pem"

[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:10143"
tls = "starttls"
pool = "main"

[[pool]]
name = "main"

  [[pool.backend]]
  name = "mail1"
  imap = "127.0.0.1:11143"
  pop3 = "127.0.0.1:11110"
  smtp = "127.0.0.1:11025"
`

func cfgWith(extra string) string { return cfgBase + extra }

func cfgReplaced(old, new string) string {
	if !strings.Contains(cfgBase, old) {
		panic("cfgBase has no " + old)
	}
	return strings.Replace(cfgBase, old, new, 1)
}

// cfgWant is one problem a case must report: key path, the text of the line it
// must point at ("" = no line), and part of the message.
type cfgWant struct{ key, at, msg string }

func TestExampleLoads(t *testing.T) {
	c, err := Load(exampleConfigPath)
	if err != nil {
		t.Fatalf("Load(%s): %v", exampleConfigPath, err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate of loaded example: %v", err)
	}
	if w := c.Warnings(); len(w) > 0 {
		t.Errorf("example has warnings: %q", w)
	}
	if got := len(c.Pools); got != 1 || c.Pools[0].Name != "main" || len(c.Pools[0].Backends) < 2 {
		t.Errorf("example should have one pool \"main\" with 2-3 backends, got %+v", c.Pools)
	}
}

// TestExampleDocumentsEveryKey: DESIGN.md wants every key in the example.
func TestExampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile(exampleConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range configLeafKeys(reflect.TypeFor[Config](), "") {
		name := key[strings.LastIndexByte(key, '.')+1:]
		re := regexp.MustCompile(`(?m)^[ \t]*(# )?` + regexp.QuoteMeta(name) + `[ \t]*=|[{,] *` + regexp.QuoteMeta(name) + ` *=`)
		if !re.Match(data) {
			t.Errorf("key %s is not in %s", key, exampleConfigPath)
		}
	}
}

func configLeafKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[Duration]() {
			keys = append(keys, configLeafKeys(ft, prefix+tagName(f)+".")...)
		} else {
			keys = append(keys, prefix+tagName(f))
		}
	}
	return keys
}

func TestParseConfigProblems(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		cfgWant []cfgWant
	}{
		{"unknown key", cfgWith("[log]\nlevle = \"debug\"\n"),
			[]cfgWant{{"log.levle", "levle", "unknown key"}}},
		{"unknown dotted key", cfgWith("[log]\nlevel = \"info\"\nfoo.bar = 1\n"),
			[]cfgWant{{"log.foo", "foo.bar", "unknown key"}}},
		{"unknown table", cfgWith("[frobnicate]\nx = 1\n"),
			[]cfgWant{{"frobnicate", "[frobnicate]", "unknown key"}}},
		{"unknown key in second listener", cfgWith(`
[[listener]]
name = "imap2"
protocol = "imap"
address = "127.0.0.1:10144"
pool = "main"
poool = "main"
`), []cfgWant{{"listener[1].poool", "poool", "unknown key"}}},
		{"unknown key in second backend", cfgWith(`
  [[pool.backend]]
  name = "mail2"
  imap = "127.0.0.1:12143"
  wieght = 2
`), []cfgWant{{"pool[0].backend[1].wieght", "wieght", "unknown key"}}},
		{"wrongly-cased key", cfgReplaced(`name = "imap"`, `Name = "imap"`),
			[]cfgWant{{"listener[0].Name", "Name =", `did you mean "name"`}}},
		{"wrongly-cased table", cfgWith("[Log]\nlevel = \"info\"\n"),
			[]cfgWant{{"Log", "[Log]", `did you mean "log"`}}},
		{"bare number as duration", cfgWith("  [pool.health]\n  timeout = 30\n"),
			[]cfgWant{{"pool[0].health.timeout", "timeout = 30", `30 is not a duration`}}},
		{"bad duration string", cfgWith("[limits]\nlogin_timeout = \"30x\"\n"),
			[]cfgWant{{"limits.login_timeout", "30x", `"30x" is not a duration`}}},
		{"negative duration", cfgReplaced(`name = "main"`, "name = \"main\"\nlinger = \"-5s\""),
			[]cfgWant{{"pool[0].linger", "linger", "negative"}}},
		{"wrong type", cfgWith("[limits]\nmax_connections = \"many\"\n"),
			[]cfgWant{{"limits.max_connections", "many", "must be an integer, not a string"}}},
		{"duration in second pool", cfgWith(`
[[pool]]
name = "other"
linger = 5
  [[pool.backend]]
  name = "x"
  imap = "127.0.0.1:1"
`), []cfgWant{{"pool[1].linger", "linger = 5", "not a duration"}}},
		{"listener names a missing pool", cfgReplaced(`pool = "main"`, `pool = "nope"`),
			[]cfgWant{{"listener[0].pool", `"nope"`, `no [[pool]] named "nope"`}}},
		{"listener without pool", cfgReplaced("pool = \"main\"\n", ""),
			[]cfgWant{{"listener[0].pool", "[[listener]]", "missing"}}},
		{"no listener", strings.Replace(cfgReplaced("[[listener]]\n", ""), "name = \"imap\"\nprotocol = \"imap\"\naddress = \"127.0.0.1:10143\"\ntls = \"starttls\"\npool = \"main\"\n", "", 1),
			[]cfgWant{{"listener", "", "at least one"}}},
		{"duplicate listener name", cfgWith(`
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:10144"
pool = "main"
`), []cfgWant{{"listener[1].name", `name = "imap"`, `duplicate listener name "imap"`}}},
		{"duplicate pool name", cfgWith(`
[[pool]]
name = "main"
  [[pool.backend]]
  name = "x"
  imap = "127.0.0.1:1"
`), []cfgWant{{"pool[1].name", "", `duplicate pool name "main"`}}},
		{"duplicate backend name", cfgWith(`
  [[pool.backend]]
  name = "mail1"
  imap = "127.0.0.1:12143"
`), []cfgWant{{"pool[0].backend[1].name", "", `duplicate backend name "mail1"`}}},
		{"wildcard address conflicts", cfgWith(`
[[listener]]
name = "any"
protocol = "imap"
address = "0.0.0.0:10143"
pool = "main"
`), []cfgWant{{"listener[1].address", "0.0.0.0:10143", "conflicts with listener[0].address"}}},
		{"empty host and [::] conflict", cfgWith(`
[[listener]]
name = "a"
protocol = "pop3"
address = ":10110"
pool = "main"
[[listener]]
name = "b"
protocol = "pop3"
address = "[::]:10110"
pool = "main"
`), []cfgWant{{"listener[2].address", "[::]:10110", "conflicts with listener[1].address"}}},
		// Issue 10, point 12: one socket spelt two ways is one socket.
		{"port with a leading zero", cfgWith(`
[[listener]]
name = "zero"
protocol = "imap"
address = "127.0.0.1:010143"
pool = "main"
`), []cfgWant{{"listener[1].address", "127.0.0.1:010143", "conflicts with listener[0].address"}}},
		{"localhost is 127.0.0.1", cfgWith(`
[[listener]]
name = "local"
protocol = "imap"
address = "LocalHost:10143"
pool = "main"
`), []cfgWant{{"listener[1].address", "LocalHost:10143", "conflicts with listener[0].address"}}},
		// Issue 10, point 12: a value of the wrong type does not hide the
		// other problems of its table.
		{"wrong type and bad values in one table", cfgWith(`
[limits]
max_connections = 0
max_connections_per_ip = "many"
login_timeout = "0s"
`), []cfgWant{
			{"limits.max_connections", "max_connections = 0", "0 is less than 1"},
			{"limits.max_connections_per_ip", "many", "must be an integer, not a string"},
			{"limits.login_timeout", "login_timeout", "must be longer than 0s"},
		}},
		{"admin conflicts with listener", cfgWith("[admin]\nlisten = \"127.0.0.1:10143\"\n"),
			[]cfgWant{{"listener[0].address", `address = "127.0.0.1:10143"`, "conflicts with admin.listen"}}},
		{"bad enumerations", cfgWith(`
[log]
level = "verbose"
format = "xml"
[auth]
mode = "trust"
username_case = "upper"
backend_login = "admin"
`), []cfgWant{
			{"log.level", "verbose", `must be "debug", "info", "warn" or "error", not "verbose"`},
			{"log.format", "xml", `not "xml"`},
			{"auth.mode", "trust", `not "trust"`},
			{"auth.username_case", "upper", `not "upper"`},
			{"auth.backend_login", "admin", `not "admin"`},
		}},
		{"bad min_version", cfgReplaced(`key = "key.pem"`, "key = \"key.pem\"\nmin_version = \"1.1\""),
			[]cfgWant{{"tls.min_version", "1.1", `must be "1.2" or "1.3", not "1.1"`}}},
		{"bad listener enumerations", cfgReplaced(`tls = "starttls"`, "tls = \"sometimes\"\nsmtp_auth = \"required\"\napop = true\nmax_size = 10"),
			[]cfgWant{
				{"listener[0].tls", "sometimes", `not "sometimes"`},
				{"listener[0].smtp_auth", "smtp_auth", "only for smtp listeners"},
				{"listener[0].apop", "apop", "only for pop3 listeners"},
				{"listener[0].max_size", "max_size", "only for smtp listeners"},
			}},
		{"bad protocol", cfgReplaced(`protocol = "imap"`, `protocol = "nntp"`),
			[]cfgWant{{"listener[0].protocol", "nntp", `not "nntp"`}}},
		{"bad pool policies", cfgReplaced(`name = "main"`, "name = \"main\"\nimap = \"random\"\npop3 = \"sticky\""),
			[]cfgWant{{"pool[0].imap", "random", `not "random"`}, {"pool[0].pop3", `"sticky"`, `must be "round-robin" or "least-conn", not "sticky"`}}},
		{"bad backend settings", cfgWith(`
  [[pool.backend]]
  name = "mail2"
  imap = "mail2"
  pop3 = "127.0.0.1:0"
  smtp = ":25"
  tls = "maybe"
  weight = -1
  send_proxy_protocol = "v3"
`), []cfgWant{
			{"pool[0].backend[1].imap", `"mail2"`, "not host:port"},
			{"pool[0].backend[1].pop3", "127.0.0.1:0", "port must be a number from 1 to 65535"},
			{"pool[0].backend[1].smtp", ":25", "a host is needed"},
			{"pool[0].backend[1].tls", "maybe", `not "maybe"`},
			{"pool[0].backend[1].weight", "weight", "negative"},
			{"pool[0].backend[1].send_proxy_protocol", "v3", `not "v3"`},
		}},
		{"named port refused", cfgReplaced("127.0.0.1:10143", "127.0.0.1:imap"),
			[]cfgWant{{"listener[0].address", "127.0.0.1:imap", "port must be a number"}}},
		{"health bounds", cfgWith("  [pool.health]\n  interval = \"0s\"\n  rise = 0\n  fall = -1\n"),
			[]cfgWant{{"pool[0].health.interval", "interval", "longer than 0s"}, {"pool[0].health.rise", "rise", "less than 1"}, {"pool[0].health.fall", "fall", "less than 1"}}},
		{"limits bounds", cfgWith("[limits]\nmax_connections = 0\nidle_timeout = \"30s\"\n"),
			[]cfgWant{{"limits.max_connections", "max_connections", "less than 1"}, {"limits.idle_timeout", "idle_timeout", "RFC 9051"}}},
		{"tls listener needs cert and key", strings.Replace(cfgBase, "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n", "", 1),
			[]cfgWant{{"listener[0].tls", `tls = "starttls"`, "needs [tls] cert and key"}}},
		{"cert without key", cfgReplaced("key = \"key.pem\"\n", ""),
			[]cfgWant{{"tls.key", "[tls]", "missing"}, {"listener[0].tls", `tls = "starttls"`, "needs [tls] cert and key"}}},
		{"require_tls without tls", cfgReplaced(`tls = "starttls"`, "tls = \"none\"\nrequire_tls = true"),
			[]cfgWant{{"listener[0].require_tls", "require_tls", `needs tls = "starttls" or "implicit"`}}},
		{"pool lacks protocol", cfgWith(`
[[listener]]
name = "pop3"
protocol = "pop3"
address = "127.0.0.1:10110"
pool = "imaponly"
[[pool]]
name = "imaponly"
  [[pool.backend]]
  name = "x"
  imap = "127.0.0.1:1"
`), []cfgWant{{"listener[1].pool", `pool = "imaponly"`, `pool "imaponly" has no backend with a pop3 address`}}},
		{"pin names missing backend", cfgReplaced(`name = "main"`, "name = \"main\"\npins = { \"alice\" = \"mail9\", \"Bob\" = \"mail1\" }"),
			[]cfgWant{{"pool[0].pins.alice", "pins", `no backend "mail9"`}, {"pool[0].pins.Bob", "pins", `write "bob"`}}},
		{"verify needs users_file", cfgWith("[auth]\nmode = \"verify\"\n"),
			[]cfgWant{{"auth.users_file", "[auth]", "missing"}}},
		{"master needs credentials", cfgWith("[auth]\nmode = \"verify\"\nusers_file = \"users\"\nbackend_login = \"master\"\n"),
			[]cfgWant{{"auth.master_user", "[auth]", "missing"}, {"auth.master_password_file", "[auth]", "missing"}}},
		{"master needs verify", cfgWith("[auth]\nbackend_login = \"master\"\nmaster_user = \"proxy\"\nmaster_password_file = \"secret\"\n"),
			[]cfgWant{{"auth.backend_login", "backend_login", `needs auth.mode = "verify": otherwise anyone could log in as anyone`}}},
		{"no apop with verify", cfgWith("[auth]\nmode = \"verify\"\nusers_file = \"users\"\n[[listener]]\nname = \"pop3\"\nprotocol = \"pop3\"\naddress = \"127.0.0.1:10110\"\npool = \"main\"\napop = true\n"),
			[]cfgWant{{"listener[1].apop", "apop", "cannot check an APOP digest"}}},
		{"http needs a URL", cfgWith("[auth]\nmode = \"http\"\nhttp_url = \"ftp://x\"\nhttp_timeout = \"0s\"\n"),
			[]cfgWant{{"auth.http_url", "http_url", "needs an http:// or https:// URL"}, {"auth.http_timeout", "http_timeout", ""}}},
		{"no apop with http", cfgWith("[auth]\nmode = \"http\"\nhttp_url = \"http://127.0.0.1:9080/auth\"\n[[listener]]\nname = \"pop3\"\nprotocol = \"pop3\"\naddress = \"127.0.0.1:10110\"\npool = \"main\"\napop = true\n"),
			[]cfgWant{{"listener[1].apop", "apop", "gets no APOP digest"}}},
		{"penalty checks", cfgWith("[auth.penalty]\nwindow = \"0s\"\nip_user_limit = -1\n"),
			[]cfgWant{{"auth.penalty.window", "window", "longer than 0s"}, {"auth.penalty.ip_user_limit", "ip_user_limit", "less than 0"}}},
		{"peer checks", cfgWith("[peer]\nnode = \"lb1\"\nlisten = \"0.0.0.0:7946\"\naddress = \"lb2\"\ninterval = \"2s\"\n"),
			[]cfgWant{{"peer.address", "lb2", "not host:port"}, {"peer.secret_file", "[peer]", "missing"}, {"peer.dead_after", "[peer]", "longer than peer.interval"}}},
		{"pair address checks", cfgWith("[peer]\nnode = \"lb1\"\nlisten = \"0.0.0.0:7946\"\naddress = \"lb2:7946\"\nsecret_file = \"s\"\nvip = [\"192.0.2.100\"]\nwitness = \"gw\"\naddress2 = \"lb2:7947\"\n"),
			[]cfgWant{{"peer.vip[0]", "vip", "not an address with a prefix length"}, {"peer.interface", "[peer]", "missing"},
				{"peer.witness", "witness", "not an IPv4 address"}, {"peer.listen2", "[peer]", "missing"}}},
		{"store checks", cfgWith("[store]\ntype = \"etcd\"\non_store_loss = \"panic\"\nlease_ttl = \"100ms\"\n"),
			[]cfgWant{{"store.type", "type", `"memory" or "redis"`}, {"store.on_store_loss", "on_store_loss", `"hash" or "refuse"`}, {"store.lease_ttl", "lease_ttl", "shorter than 1s"}}},
		{"redis store checks", cfgWith("[store]\ntype = \"redis\"\naddress = \"redis\"\nstate_file = \"s.json\"\nsentinel_master = \"m\"\n"),
			[]cfgWant{{"store.address", "address", "not host:port"}, {"store.state_file", "state_file", "only for type memory"}, {"store.sentinel_master", "sentinel_master", "needs store.addresses"}}},
		{"multi-line values keep line numbers", cfgWith(`
[peer]
node = "lb1"
listen = "0.0.0.0:7946"
address = "lb2:7946"
secret_file = """
peer.secret"""
on_active = [
  "ip addr add 192.0.2.1/24 dev eth0", # a comment ] with a bracket
  'ip link set eth0 up',
]
on_standbi = []
`), []cfgWant{{"peer.on_standbi", "on_standbi", "unknown key"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc), "test.toml")
			if err == nil {
				t.Fatalf("no error; cfgWant %v", tt.cfgWant)
			}
			checkConfigProblems(t, tt.doc, err, tt.cfgWant)
		})
	}
}

func checkConfigProblems(t *testing.T, doc string, err error, wants []cfgWant) {
	t.Helper()
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %T is not a *Error: %v", err, err)
	}
	text := err.Error()
	if !strings.HasPrefix(text, "test.toml: ") {
		t.Errorf("error does not start with the file name: %s", text)
	}
	for _, w := range wants {
		prefix := w.key + ": "
		if w.at != "" {
			prefix = fmt.Sprintf("line %d: %s", cfgLineOf(t, doc, w.at), prefix)
		}
		found := false
		for _, p := range strings.Split(text, "\n") {
			if strings.Contains(p, prefix) && strings.Contains(p, w.msg) {
				found = true
			}
		}
		if !found {
			t.Errorf("cfgWant a problem %q ... %q; got:\n%s", prefix, w.msg, text)
		}
	}
	if len(ce.Problems) != len(wants) {
		t.Errorf("got %d problems, cfgWant %d:\n%s", len(ce.Problems), len(wants), text)
	}
}

// lineOfText is the 1-based line of the last line of doc containing needle
// (cases add their text at the end of cfgBase).
func cfgLineOf(t *testing.T, doc, needle string) int {
	t.Helper()
	lines := strings.Split(doc, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], needle) {
			return i + 1
		}
	}
	t.Fatalf("test bug: %q not in the document", needle)
	return 0
}

func TestMultipleProblemsTogether(t *testing.T) {
	doc := cfgWith(`
[log]
level = "loud"
[limits]
login_timeout = "0s"
[[listener]]
name = "pop3"
protocol = "pop3"
address = "127.0.0.1:10143"
pool = "missing"
`)
	_, err := Parse([]byte(doc), "test.toml")
	checkConfigProblems(t, doc, err, []cfgWant{
		{"log.level", "loud", `not "loud"`},
		{"limits.login_timeout", "login_timeout", "longer than 0s"},
		{"listener[1].address", `"127.0.0.1:10143"`, "conflicts with listener[0].address"},
		{"listener[1].pool", `"missing"`, `no [[pool]] named "missing"`},
	})
	if !strings.Contains(err.Error(), "4 problems:") {
		t.Errorf("cfgWant a count of problems in %q", err)
	}
	// Line order, whatever order the checks ran in.
	if i, j := strings.Index(err.Error(), "log.level"), strings.Index(err.Error(), "listener[1].pool"); i > j {
		t.Errorf("problems not in line order:\n%s", err)
	}
}

func TestUnknownKeyAlongsideValidation(t *testing.T) {
	doc := cfgWith("[log]\nlevel = \"loud\"\ncolour = true\n")
	_, err := Parse([]byte(doc), "test.toml")
	checkConfigProblems(t, doc, err, []cfgWant{
		{"log.level", "loud", `not "loud"`},
		{"log.colour", "colour", "unknown key"},
	})
}

func TestSyntaxError(t *testing.T) {
	doc := cfgWith("[log]\nlevel = \"info\nformat = \"text\"\n")
	_, err := Parse([]byte(doc), "test.toml")
	if err == nil {
		t.Fatal("no error")
	}
	line := cfgLineOf(t, doc, `level = "info`)
	if !strings.Contains(err.Error(), fmt.Sprintf("test.toml: line %d: column", line)) {
		t.Errorf("cfgWant line %d in %q", line, err)
	}
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		t.Errorf("errors.As(toml.ParseError) failed for %v", err)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse([]byte(cfgBase), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	d := func(s string) Duration {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return Duration{v}
	}
	checks := []struct {
		name         string
		got, cfgWant any
	}{
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "text"},
		{"admin.listen", c.Admin.Listen, "127.0.0.1:9025"},
		{"tls.min_version", c.TLS.MinVersion, "1.2"},
		{"limits", c.Limits, LimitsConfig{20000, 100, d("60s"), d("30m"), d("2s"), d("10s"), d("10s"), d("250ms")}},
		{"auth", c.Auth, AuthConfig{Mode: "passthrough", UsernameCase: "lower", BackendLogin: "user",
			HTTPTimeout: d("5s"), HTTPCacheTTL: d("30s"),
			Penalty: PenaltyConfig{Enabled: true, Window: d("15m"), MaxDelay: d("15s"), IPUserLimit: 10, IPLimit: 1000, UserLimit: 100}}},
		{"listener.tls", c.Listeners[0].TLS, "starttls"},
		{"listener.smtp_auth", c.Listeners[0].SMTPAuth, "off"},
		{"pool.imap", c.Pools[0].IMAP, "sticky"},
		{"pool.pop3", c.Pools[0].POP3, "round-robin"},
		{"pool.smtp", c.Pools[0].SMTP, "round-robin"},
		{"pool.linger", c.Pools[0].Linger, d("60s")},
		{"pool.health", c.Pools[0].Health, HealthConfig{d("2s"), d("1s"), 2, 2}},
		{"backend.weight", c.Pools[0].Backends[0].Weight, 1},
		{"backend.tls", c.Pools[0].Backends[0].TLS, "none"},
		{"peer", c.Peer, (*PeerConfig)(nil)},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.cfgWant) {
			t.Errorf("%s = %+v, cfgWant %+v", ck.name, ck.got, ck.cfgWant)
		}
	}
}

func TestExplicitZeroValuesKept(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		get     func(*Config) any
		cfgWant any
	}{
		{"admin listen empty means off", cfgWith("[admin]\nlisten = \"\"\n"),
			func(c *Config) any { return c.Admin.Listen }, ""},
		{"admin table without listen gets default", cfgWith("[admin]\ntoken_file = \"t\"\n"),
			func(c *Config) any { return c.Admin.Listen }, "127.0.0.1:9025"},
		{"weight 0 allowed", cfgWith("  [[pool.backend]]\n  name = \"m2\"\n  imap = \"127.0.0.1:2\"\n  weight = 0\n"),
			func(c *Config) any { return []int{c.Pools[0].Backends[0].Weight, c.Pools[0].Backends[1].Weight} }, []int{1, 0}},
		{"auth_failure_delay 0s allowed", cfgWith("[limits]\nauth_failure_delay = \"0s\"\n"),
			func(c *Config) any { return c.Limits.AuthFailureDelay.Duration }, time.Duration(0)},
		{"listener tls defaults per element", cfgWith("[[listener]]\nname = \"b\"\nprotocol = \"pop3\"\naddress = \"127.0.0.1:10110\"\npool = \"main\"\n"),
			func(c *Config) any { return []string{c.Listeners[0].TLS, c.Listeners[1].TLS} }, []string{"starttls", "none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.doc), "test.toml")
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.get(c); !reflect.DeepEqual(got, tt.cfgWant) {
				t.Errorf("got %v, cfgWant %v", got, tt.cfgWant)
			}
		})
	}
}

func TestDurationTOML(t *testing.T) {
	tests := []struct {
		in      any
		cfgWant time.Duration
		wantErr string
	}{
		{"30s", 30 * time.Second, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"0s", 0, ""},
		{int64(30), 0, `30 is not a duration: write a string with a unit, such as "30s"`},
		{"30", 0, `"30" is not a duration`},
		{"-1s", 0, "negative"},
		{1.5, 0, "not a float"},
	}
	for _, tt := range tests {
		var d Duration
		err := d.UnmarshalTOML(tt.in)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("UnmarshalTOML(%#v): %v", tt.in, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("UnmarshalTOML(%#v) = %v, cfgWant error containing %q", tt.in, err, tt.wantErr)
		case d.Duration != tt.cfgWant:
			t.Errorf("UnmarshalTOML(%#v) = %v, cfgWant %v", tt.in, d.Duration, tt.cfgWant)
		}
	}
}

// TestRoundTrip encodes the loaded example and loads it again.
func TestRoundTrip(t *testing.T) {
	c, err := Load(exampleConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(buf.Bytes(), "encoded")
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	c.source, c.lines, c2.source, c2.lines = "", nil, "", nil
	if !reflect.DeepEqual(c, c2) {
		t.Errorf("round trip changed the config:\n%+v\n%+v", c, c2)
	}
}

func TestWarnings(t *testing.T) {
	c, err := Parse([]byte(cfgWith("[limits]\nidle_timeout = \"5m\"\n")), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(c.Warnings(), "\n"); !strings.Contains(w, "limits.idle_timeout") || !strings.Contains(w, "RFC 9051") {
		t.Errorf("cfgWant an idle_timeout warning, got %q", w)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	err := (&Config{}).Validate()
	if err == nil {
		t.Fatal("zero Config validated")
	}
	if text := err.Error(); strings.Contains(text, "line ") || !strings.Contains(text, "log.level: ") {
		t.Errorf("unexpected text for a Config without a file:\n%s", text)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	_, err := Load("does-not-exist.toml")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, cfgWant os.ErrNotExist", err)
	}
}
