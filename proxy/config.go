package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config is the whole TOML contract of mailproxy (see DESIGN.md and
// mailproxy.toml.example). A Config returned by LoadConfig or ParseConfig has
// its defaults applied and has passed Validate; treat it as immutable: on
// reload a new Config is loaded and swapped in whole.
//
// Defaults apply only to keys the file does not write: a key written with a
// zero value keeps it (so "rise = 0" is refused by Validate rather than
// replaced, and `listen = ""` in [admin] means off).
type Config struct {
	Log       LogConfig        `toml:"log"`
	Admin     AdminConfig      `toml:"admin"`
	TLS       TLSConfig        `toml:"tls"`
	Limits    LimitsConfig     `toml:"limits"`
	Auth      AuthConfig       `toml:"auth"`
	Listeners []ListenerConfig `toml:"listener"`
	Pools     []PoolConfig     `toml:"pool"`
	Peer      *PeerConfig      `toml:"peer"` // nil: no pair, always active

	source string         // file name for messages; set by ParseConfig
	lines  map[string]int // indexed key path -> line; set by ParseConfig
}

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string `toml:"level"`  // debug | info | warn | error; default info
	Format string `toml:"format"` // text | json; default text
}

// AdminConfig configures the admin HTTP API.
type AdminConfig struct {
	// Listen is host:port of the admin HTTP API; default 127.0.0.1:9025 when
	// the key (or the [admin] table) is absent; an explicit "" turns it off.
	Listen    string `toml:"listen"`
	TokenFile string `toml:"token_file"` // bearer token for mutating calls; "" = none required
}

// TLSConfig is the server certificate used by every TLS listener. The files
// are read when the server starts and on SIGHUP, never by LoadConfig.
type TLSConfig struct {
	Cert       string `toml:"cert"`        // PEM chain; needed by any starttls/implicit listener
	Key        string `toml:"key"`         // PEM private key
	MinVersion string `toml:"min_version"` // "1.2" (default) or "1.3"
}

// LimitsConfig bounds connections and phases.
type LimitsConfig struct {
	MaxConnections      int      `toml:"max_connections"`        // default 20000; >= 1
	MaxConnectionsPerIP int      `toml:"max_connections_per_ip"` // default 100; >= 1
	LoginTimeout        Duration `toml:"login_timeout"`          // accept to login; default 60s; > 0
	IdleTimeout         Duration `toml:"idle_timeout"`           // relay phase; default 30m; >= 1m with IMAP listeners (RFC 9051 §5.4 wants 29m)
	AuthFailureDelay    Duration `toml:"auth_failure_delay"`     // before every failed-login reply; default 2s; 0 = none
	ShutdownGrace       Duration `toml:"shutdown_grace"`         // default 10s (extension): sessions get this long to end on shutdown; 0 = close at once
}

// AuthConfig says how logins are verified and turned into routing keys.
type AuthConfig struct {
	Mode               string `toml:"mode"`          // passthrough (default) | verify (needs users_file)
	UsernameCase       string `toml:"username_case"` // lower (default) | keep
	DefaultDomain      string `toml:"default_domain"`
	UsersFile          string `toml:"users_file"`    // verify: Dovecot passwd-file, read at start and on SIGHUP
	BackendLogin       string `toml:"backend_login"` // user (default) | master (needs mode verify, master_user, master_password_file)
	MasterUser         string `toml:"master_user"`
	MasterPasswordFile string `toml:"master_password_file"` // read at start and on SIGHUP, white space trimmed
}

// ListenerConfig is one [[listener]].
type ListenerConfig struct {
	Name          string `toml:"name"`     // required, unique
	Protocol      string `toml:"protocol"` // imap | pop3 | smtp; required
	Address       string `toml:"address"`  // host:port; required
	TLS           string `toml:"tls"`      // none (default) | starttls | implicit
	RequireTLS    bool   `toml:"require_tls"`
	Pool          string `toml:"pool"`           // required; a [[pool]] name
	ProxyProtocol bool   `toml:"proxy_protocol"` // a balancer's PROXY v1/v2 header names the client

	// ProxyProtocolTrusted are the networks (CIDR) and addresses allowed to
	// connect when ProxyProtocol is on: the balancers. A connection from
	// anywhere else is closed before anything is read, so nobody else can
	// claim a client address. Default loopback ("127.0.0.0/8", "::1").
	ProxyProtocolTrusted []string `toml:"proxy_protocol_trusted"`

	// Extensions.
	SMTPAuth string `toml:"smtp_auth"` // smtp only: off | optional | required; default off
	APOP     bool   `toml:"apop"`      // pop3 only: pick the backend at connect and relay its APOP greeting
	MaxSize  int64  `toml:"max_size"`  // smtp only: SIZE limit in bytes; 0 = the backend's
	Hostname string `toml:"hostname"`  // name in greetings; default the machine's host name
}

// PoolConfig is one [[pool]] of backends.
type PoolConfig struct {
	Name     string            `toml:"name"`   // required, unique
	IMAP     string            `toml:"imap"`   // sticky (default) | round-robin | least-conn
	POP3     string            `toml:"pop3"`   // round-robin (default) | least-conn
	SMTP     string            `toml:"smtp"`   // round-robin (default) | least-conn
	Linger   Duration          `toml:"linger"` // pin kept after a user's last session; default 60s
	Pins     map[string]string `toml:"pins"`   // routing key -> backend name; wins over hashing
	Health   HealthConfig      `toml:"health"`
	Backends []BackendConfig   `toml:"backend"`
}

// HealthConfig configures a pool's health checks.
type HealthConfig struct {
	Interval Duration `toml:"interval"` // default 2s; > 0
	Timeout  Duration `toml:"timeout"`  // default 1s; > 0; also the backend dial timeout
	Rise     int      `toml:"rise"`     // successes to come up; default 2; >= 1
	Fall     int      `toml:"fall"`     // failures to go down; default 2; >= 1
}

// BackendConfig is one [[pool.backend]]. At least one of IMAP, POP3 and SMTP
// is set.
type BackendConfig struct {
	Name              string `toml:"name"` // required, unique in its pool
	IMAP              string `toml:"imap"` // host:port
	POP3              string `toml:"pop3"` // host:port
	SMTP              string `toml:"smtp"` // host:port
	TLS               string `toml:"tls"`  // none (default) | starttls | implicit
	TLSServerName     string `toml:"tls_server_name"`
	TLSSkipVerify     bool   `toml:"tls_skip_verify"`
	TLSCA             string `toml:"tls_ca"`
	Weight            int    `toml:"weight"`              // default 1; 0 = never chosen by hashing (pins and leases still apply)
	SendProxyProtocol string `toml:"send_proxy_protocol"` // "" (default) | v1 | v2: PROXY header first, on sessions and health checks
	ForwardClient     bool   `toml:"forward_client"`
	Disabled          bool   `toml:"disabled"` // out of service: never checked or chosen; drain/undrain do not change it
}

// PeerConfig configures the active/standby pair; package proxy/peer runs
// it. Both instances send each other HMAC-authenticated UDP heartbeats;
// the active one holds the client listeners open, the standby none.
type PeerConfig struct {
	Node       string   `toml:"node"`        // this instance's name, unique in the pair; required
	Listen     string   `toml:"listen"`      // UDP host:port for heartbeats; required
	Address    string   `toml:"address"`     // the other instance's UDP host:port; required
	SecretFile string   `toml:"secret_file"` // shared HMAC-SHA256 key, white space trimmed; required
	Priority   int      `toml:"priority"`    // the higher one is active when both are alive; ties: the lower node name
	Interval   Duration `toml:"interval"`    // between heartbeats; default 200ms
	DeadAfter  Duration `toml:"dead_after"`  // silence that makes the peer lost; default 1s; > interval
	Preempt    bool     `toml:"preempt"`     // true: on return, take over from a lower-ranked active peer
	OnActive   []string `toml:"on_active"`   // `sh -c` commands run on becoming active, before the listeners open
	OnStandby  []string `toml:"on_standby"`  // `sh -c` commands run on becoming standby (and at start), after they close
}

// Duration is a time.Duration written in TOML as a Go duration string
// ("30s"). A bare number is refused: BurntSushi/toml would read it as
// nanoseconds, which is never what an operator means.
type Duration struct{ time.Duration }

// UnmarshalTOML accepts a non-negative Go duration string and nothing else.
func (d *Duration) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		return d.UnmarshalText([]byte(v))
	case int64:
		return fmt.Errorf("%d is not a duration: write a string with a unit, such as \"%ds\"", v, v)
	}
	return fmt.Errorf("must be a duration string such as \"30s\", not %s", article(tomlTypeName(v)))
}

// UnmarshalText parses a non-negative Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration: write a Go duration such as \"30s\", \"5m\" or \"1h30m\"", b)
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration so that UnmarshalText reads it back.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Unbuilt lists, one human message each, what the configuration asks for
// that mailproxy parses but cannot do yet; `run` refuses to start while it
// is not empty (`check` accepts it). This is the one place to delete an
// entry when its feature lands.
func (c *Config) Unbuilt() []string {
	ck := &cfgChecker{lines: c.lines}
	return problemMessages(ck.problems)
}

// Warnings lists settings that are valid but probably not meant.
func (c *Config) Warnings() []string {
	ck := &cfgChecker{lines: c.lines}
	if idle := c.Limits.IdleTimeout.Duration; c.hasProtocol("imap") && idle >= time.Minute && idle < 29*time.Minute {
		ck.add("limits.idle_timeout", "%v is below 29m: IMAP clients in IDLE may be cut off (RFC 9051 §5.4)", idle)
	}
	for i, l := range c.Listeners {
		for j, n := range l.ProxyProtocolTrusted {
			if p, err := parseTrusted(n); err == nil && p.Bits() == 0 && l.ProxyProtocol {
				ck.add(fmt.Sprintf("listener[%d].proxy_protocol_trusted[%d]", i, j), "%q trusts every address: any client can claim to be any other", n)
			}
		}
	}
	for i, p := range c.Pools {
		for j, b := range p.Backends {
			if b.TLSSkipVerify {
				ck.add(fmt.Sprintf("pool[%d].backend[%d].tls_skip_verify", i, j), "the certificate of backend %q is not verified", b.Name)
			}
		}
	}
	return problemMessages(sortProblems(ck.problems))
}

func problemMessages(ps []Problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Error()
	}
	return out
}

func (c *Config) hasProtocol(proto string) bool {
	return slices.ContainsFunc(c.Listeners, func(l ListenerConfig) bool { return l.Protocol == proto })
}

// addr returns the backend's address for a protocol.
func (b *BackendConfig) addr(proto string) string {
	switch proto {
	case "imap":
		return b.IMAP
	case "pop3":
		return b.POP3
	case "smtp":
		return b.SMTP
	}
	return ""
}

// Validate reports every problem of the configuration at once, as a
// *ConfigError whose problems name their key path ("listener[2].pool") and,
// for a loaded file, their line. It reads no files.
func (c *Config) Validate() error {
	if ps := c.problems(); len(ps) > 0 {
		return &ConfigError{File: c.source, Problems: sortProblems(ps)}
	}
	return nil
}

func (c *Config) problems() []Problem {
	ck := &cfgChecker{lines: c.lines}
	c.checkGlobal(ck)
	pools := c.checkPools(ck)
	c.checkListeners(ck, pools)
	c.checkPeer(ck)
	return ck.problems
}

func (c *Config) checkGlobal(ck *cfgChecker) {
	ck.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	ck.oneOf("log.format", c.Log.Format, "text", "json")
	if c.Admin.Listen != "" {
		ck.addr("admin.listen", c.Admin.Listen, false)
	}
	ck.oneOf("tls.min_version", c.TLS.MinVersion, "1.2", "1.3")
	if c.TLS.Cert != "" && c.TLS.Key == "" {
		ck.add("tls.key", "missing: tls.cert is set")
	}
	if c.TLS.Key != "" && c.TLS.Cert == "" {
		ck.add("tls.cert", "missing: tls.key is set")
	}

	lim := c.Limits
	ck.atLeast("limits.max_connections", lim.MaxConnections, 1)
	ck.atLeast("limits.max_connections_per_ip", lim.MaxConnectionsPerIP, 1)
	ck.positive("limits.login_timeout", lim.LoginTimeout)
	ck.positive("limits.idle_timeout", lim.IdleTimeout)
	if idle := lim.IdleTimeout.Duration; idle > 0 && idle < time.Minute && c.hasProtocol("imap") {
		ck.add("limits.idle_timeout", "%v is too short for IMAP: clients in IDLE stay silent for up to 29 minutes (RFC 9051 §5.4)", idle)
	}
	ck.notNegative("limits.auth_failure_delay", lim.AuthFailureDelay)
	ck.notNegative("limits.shutdown_grace", lim.ShutdownGrace)

	a := c.Auth
	ck.oneOf("auth.mode", a.Mode, "passthrough", "verify")
	ck.oneOf("auth.username_case", a.UsernameCase, "lower", "keep")
	ck.oneOf("auth.backend_login", a.BackendLogin, "user", "master")
	if strings.ContainsAny(a.DefaultDomain, "@ \t") {
		ck.add("auth.default_domain", "%q must be a bare domain such as \"example.org\"", a.DefaultDomain)
	}
	if a.Mode == "verify" && a.UsersFile == "" {
		ck.add("auth.users_file", `missing: auth.mode = "verify" needs it`)
	}
	if a.BackendLogin == "master" {
		if a.Mode != "verify" {
			ck.add("auth.backend_login", `"master" needs auth.mode = "verify": otherwise anyone could log in as anyone`)
		}
		if a.MasterUser == "" {
			ck.add("auth.master_user", `missing: auth.backend_login = "master" needs it`)
		}
		if a.MasterPasswordFile == "" {
			ck.add("auth.master_password_file", `missing: auth.backend_login = "master" needs it`)
		}
	}
}

// checkPools checks every pool and returns the usable ones by name.
func (c *Config) checkPools(ck *cfgChecker) map[string]*PoolConfig {
	pools := map[string]*PoolConfig{}
	first := map[string]int{}
	for i := range c.Pools {
		p, key := &c.Pools[i], fmt.Sprintf("pool[%d]", i)
		if ck.unique(key+".name", p.Name, "pool", first, i) {
			pools[p.Name] = p
		}
		ck.oneOf(key+".imap", p.IMAP, "sticky", "round-robin", "least-conn")
		ck.oneOf(key+".pop3", p.POP3, "round-robin", "least-conn")
		ck.oneOf(key+".smtp", p.SMTP, "round-robin", "least-conn")
		ck.notNegative(key+".linger", p.Linger)
		ck.positive(key+".health.interval", p.Health.Interval)
		ck.positive(key+".health.timeout", p.Health.Timeout)
		ck.atLeast(key+".health.rise", p.Health.Rise, 1)
		ck.atLeast(key+".health.fall", p.Health.Fall, 1)
		if len(p.Backends) == 0 {
			ck.add(key+".backend", "pool %q has no [[pool.backend]]", p.Name)
		}
		backends := map[string]int{}
		for j := range p.Backends {
			b, bkey := &p.Backends[j], fmt.Sprintf("%s.backend[%d]", key, j)
			ck.unique(bkey+".name", b.Name, "backend", backends, j)
			c.checkBackend(ck, bkey, b)
		}
		c.checkPins(ck, key, p, backends)
	}
	return pools
}

func (c *Config) checkBackend(ck *cfgChecker, key string, b *BackendConfig) {
	if b.IMAP == "" && b.POP3 == "" && b.SMTP == "" {
		ck.add(key, "backend %q has none of imap, pop3, smtp", b.Name)
	}
	for _, proto := range []string{"imap", "pop3", "smtp"} {
		if a := b.addr(proto); a != "" {
			ck.addr(key+"."+proto, a, true)
		}
	}
	ck.oneOf(key+".tls", b.TLS, "none", "starttls", "implicit")
	if b.TLS == "none" {
		for _, o := range []struct {
			k   string
			set bool
		}{{"tls_server_name", b.TLSServerName != ""}, {"tls_skip_verify", b.TLSSkipVerify}, {"tls_ca", b.TLSCA != ""}} {
			if o.set {
				ck.add(key+"."+o.k, `has no effect with tls = "none"`)
			}
		}
	}
	if b.Weight < 0 {
		ck.add(key+".weight", "%d is negative (0 means never chosen by hashing)", b.Weight)
	}
	ck.oneOf(key+".send_proxy_protocol", b.SendProxyProtocol, "", "v1", "v2")
}

func (c *Config) checkPins(ck *cfgChecker, key string, p *PoolConfig, backends map[string]int) {
	users := make([]string, 0, len(p.Pins))
	for u := range p.Pins {
		users = append(users, u)
	}
	slices.Sort(users)
	for _, u := range users {
		pkey := keyPath(key+".pins", u)
		if _, ok := backends[p.Pins[u]]; !ok {
			ck.add(pkey, "no backend %q in pool %q", p.Pins[u], p.Name)
		}
		switch {
		case u == "":
			ck.add(pkey, "empty user name")
		case c.Auth.UsernameCase != "keep" && u != strings.ToLower(u):
			ck.add(pkey, "routing keys are lower case (auth.username_case = %q): write %q", c.Auth.UsernameCase, strings.ToLower(u))
		case c.Auth.DefaultDomain != "" && !strings.Contains(u, "@"):
			ck.add(pkey, "routing keys carry a domain (auth.default_domain = %q): write %q", c.Auth.DefaultDomain, u+"@"+c.Auth.DefaultDomain)
		}
	}
}

func (c *Config) checkListeners(ck *cfgChecker, pools map[string]*PoolConfig) {
	if len(c.Listeners) == 0 {
		ck.add("listener", "no [[listener]]: at least one is needed")
	}
	names := map[string]int{}
	var binds []listenAddr
	if c.Admin.Listen != "" {
		binds = ck.claim(binds, "admin.listen", c.Admin.Listen)
	}
	for i := range c.Listeners {
		l, key := &c.Listeners[i], fmt.Sprintf("listener[%d]", i)
		ck.unique(key+".name", l.Name, "listener", names, i)
		ck.oneOf(key+".protocol", l.Protocol, "imap", "pop3", "smtp")
		if l.Address == "" {
			ck.add(key+".address", "missing")
		} else if ck.addr(key+".address", l.Address, false) {
			binds = ck.claim(binds, key+".address", l.Address)
		}
		c.checkListenerTLS(ck, key, l)
		c.checkListenerExtensions(ck, key, l)
		checkProxyProtocol(ck, key, l)
		switch p := pools[l.Pool]; {
		case l.Pool == "":
			ck.add(key+".pool", "missing")
		case p == nil:
			ck.add(key+".pool", "no [[pool]] named %q", l.Pool)
		case !slices.Contains([]string{"imap", "pop3", "smtp"}, l.Protocol):
			// reported above
		case !slices.ContainsFunc(p.Backends, func(b BackendConfig) bool { return b.addr(l.Protocol) != "" }):
			ck.add(key+".pool", "pool %q has no backend with a %s address", l.Pool, l.Protocol)
		}
	}
}

func (c *Config) checkListenerTLS(ck *cfgChecker, key string, l *ListenerConfig) {
	ck.oneOf(key+".tls", l.TLS, "none", "starttls", "implicit")
	if (l.TLS == "starttls" || l.TLS == "implicit") && (c.TLS.Cert == "" || c.TLS.Key == "") {
		ck.add(key+".tls", "%q needs [tls] cert and key", l.TLS)
	}
	if l.RequireTLS && l.TLS == "none" {
		ck.add(key+".require_tls", `needs tls = "starttls" or "implicit": with tls = "none" no login could succeed`)
	}
}

func (c *Config) checkListenerExtensions(ck *cfgChecker, key string, l *ListenerConfig) {
	if l.Protocol == "smtp" {
		ck.oneOf(key+".smtp_auth", l.SMTPAuth, "off", "optional", "required")
	} else if l.SMTPAuth != "off" {
		ck.add(key+".smtp_auth", "only for smtp listeners")
	}
	if l.APOP && l.Protocol != "pop3" {
		ck.add(key+".apop", "only for pop3 listeners")
	} else if l.APOP && c.Auth.Mode == "verify" {
		ck.add(key+".apop", `not with auth.mode = "verify": mailproxy cannot check an APOP digest against a password hash`)
	}
	switch {
	case l.MaxSize < 0:
		ck.add(key+".max_size", "%d is negative", l.MaxSize)
	case l.MaxSize > 0 && l.Protocol != "smtp":
		ck.add(key+".max_size", "only for smtp listeners")
	}
}

// checkProxyProtocol checks the balancers a listener trusts with a PROXY
// header.
func checkProxyProtocol(ck *cfgChecker, key string, l *ListenerConfig) {
	switch {
	case !l.ProxyProtocol && len(l.ProxyProtocolTrusted) > 0:
		ck.add(key+".proxy_protocol_trusted", "has no effect without proxy_protocol = true")
		return
	case l.ProxyProtocol && len(l.ProxyProtocolTrusted) == 0:
		ck.add(key+".proxy_protocol_trusted", "is empty: every connection would be refused")
	}
	for j, n := range l.ProxyProtocolTrusted {
		p, err := parseTrusted(n)
		switch {
		case err != nil:
			ck.add(fmt.Sprintf("%s.proxy_protocol_trusted[%d]", key, j), "%q is not an address or a network such as \"192.0.2.0/24\"", n)
		case p != p.Masked():
			ck.add(fmt.Sprintf("%s.proxy_protocol_trusted[%d]", key, j), "%q has host bits set: write %q", n, p.Masked().String())
		}
	}
}

// parseTrusted reads a network ("192.0.2.0/24") or a single address
// ("192.0.2.10", a /32 or /128). IPv4-mapped IPv6 is taken as IPv4.
func parseTrusted(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: zones are not allowed", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}

func (c *Config) checkPeer(ck *cfgChecker) {
	p := c.Peer
	if p == nil {
		return
	}
	for _, k := range [][2]string{{"peer.node", p.Node}, {"peer.listen", p.Listen}, {"peer.address", p.Address}, {"peer.secret_file", p.SecretFile}} {
		if k[1] == "" {
			ck.add(k[0], "missing")
		}
	}
	if p.Listen != "" {
		ck.addr("peer.listen", p.Listen, false)
	}
	if p.Address != "" {
		ck.addr("peer.address", p.Address, true)
	}
	ck.positive("peer.interval", p.Interval)
	if p.DeadAfter.Duration <= p.Interval.Duration {
		ck.add("peer.dead_after", "%v must be longer than peer.interval (%v)", p.DeadAfter.Duration, p.Interval.Duration)
	}
}

func (ck *cfgChecker) oneOf(key, v string, allowed ...string) {
	if slices.Contains(allowed, v) {
		return
	}
	q := make([]string, len(allowed))
	for i, a := range allowed {
		q[i] = strconv.Quote(a)
	}
	ck.add(key, "must be %s or %s, not %q", strings.Join(q[:len(q)-1], ", "), q[len(q)-1], v)
}

func (ck *cfgChecker) atLeast(key string, v, least int) {
	if v < least {
		ck.add(key, "%d is less than %d", v, least)
	}
}

func (ck *cfgChecker) positive(key string, d Duration) {
	if d.Duration <= 0 {
		ck.add(key, "must be longer than 0s")
	}
}

func (ck *cfgChecker) notNegative(key string, d Duration) {
	if d.Duration < 0 {
		ck.add(key, "%v is negative", d.Duration)
	}
}

// unique checks that a name is set and not taken, recording it in seen.
func (ck *cfgChecker) unique(key, name, what string, seen map[string]int, i int) bool {
	if name == "" {
		ck.add(key, "missing: every %s needs a name", what)
		return false
	}
	if j, dup := seen[name]; dup {
		ck.add(key, "duplicate %s name %q (first at index %d)", what, name, j)
		return false
	}
	seen[name] = i
	return true
}

// addr checks host:port with a numeric port; dial targets need a host.
func (ck *cfgChecker) addr(key, addr string, needHost bool) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		ck.add(key, "%q is not host:port", addr)
		return false
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		ck.add(key, "%q: port must be a number from 1 to 65535", addr)
		return false
	}
	if needHost && host == "" {
		ck.add(key, "%q: a host is needed", addr)
		return false
	}
	return true
}

// listenAddr is an address something listens on; a wildcard host ("", 0.0.0.0,
// ::) conflicts with every host on the same port.
type listenAddr struct{ key, host, port string }

func (ck *cfgChecker) claim(binds []listenAddr, key, addr string) []listenAddr {
	host, port, _ := net.SplitHostPort(addr)
	host = strings.ToLower(host)
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
		if ip.IsUnspecified() {
			host = ""
		}
	}
	for _, b := range binds {
		if b.port == port && (b.host == host || b.host == "" || host == "") {
			ck.add(key, "%q conflicts with %s", addr, b.key)
		}
	}
	return append(binds, listenAddr{key, host, port})
}
