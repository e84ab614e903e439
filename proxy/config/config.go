package config

import (
	"fmt"
	"mailproxy/routing"
	"slices"
	"strings"
	"time"
)

// Config is the whole TOML contract of mailproxy (see DESIGN.md and
// mailproxy.toml.example). A Config returned by Load or Parse has
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
	Peer      *PeerConfig      `toml:"peer"`  // nil: no pair, always active
	Store     *StoreConfig     `toml:"store"` // never nil after loading: defaults to memory

	source string         // file name for messages; set by Parse
	lines  map[string]int // indexed key path -> line; set by Parse
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
// are read when the server starts and on every reload, never by Load.
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

	// BackendTimeout bounds one backend try: dial, greeting (and STARTTLS
	// or XCLIENT) and the backend login; a backend that has not greeted by
	// then counts as failed and the next one is tried. Default 10s; > 0.
	BackendTimeout Duration `toml:"backend_timeout"`

	// ParkAfter is how long a relay direction waits for its next burst in
	// a goroutine before it is parked: its goroutine exits and one poller
	// watches its socket (Linux). Default 250ms; 0 = never park.
	ParkAfter Duration `toml:"park_after"`
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

	// mode = "http": nginx's mail auth_http protocol.
	HTTPURL      string   `toml:"http_url"`       // required with mode http
	HTTPTimeout  Duration `toml:"http_timeout"`   // one lookup, connect to reply; default 5s; > 0
	HTTPCacheTTL Duration `toml:"http_cache_ttl"` // successful lookups kept (client address, user, salted password hash); default 30s; 0 = off

	Penalty PenaltyConfig `toml:"penalty"`
}

// PenaltyConfig is [auth.penalty]: brute-force protection in every mode.
// Failed logins count per client address, per user and per user from an
// address over a sliding window; the failed-login reply waits
// limits.auth_failure_delay doubled with each failure of the user from
// that address, up to max_delay; beyond a limit, logins are refused.
type PenaltyConfig struct {
	Enabled     bool     `toml:"enabled"`       // default true
	Window      Duration `toml:"window"`        // default 15m; > 0
	MaxDelay    Duration `toml:"max_delay"`     // default 15s
	IPUserLimit int      `toml:"ip_user_limit"` // one user from one address; default 10; 0 = no refusal
	IPLimit     int      `toml:"ip_limit"`      // all users of one address (NAT); default 1000; 0 = no refusal
	UserLimit   int      `toml:"user_limit"`    // one user from everywhere: max_delay from then on, never a refusal; default 100; 0 = off
}

// ListenerConfig is one [[listener]].
type ListenerConfig struct {
	Name          string `toml:"name"`     // required, unique
	Protocol      string `toml:"protocol"` // imap | pop3 | smtp | lmtp | managesieve; required
	Address       string `toml:"address"`  // host:port, or for lmtp also an absolute unix socket path; required
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
	SMTPAuth string `toml:"smtp_auth"` // smtp only: off | optional (default: offered when the backend offers AUTH) | required
	APOP     bool   `toml:"apop"`      // pop3 only: pick the backend at connect and relay its APOP greeting
	MaxSize  int64  `toml:"max_size"`  // smtp only: SIZE limit in bytes; 0 = the backend's
	Hostname string `toml:"hostname"`  // smtp: the name in the greeting and EHLO reply; default the machine's host name
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

// BackendConfig is one [[pool.backend]]. At least one of IMAP, POP3, SMTP,
// LMTP and ManageSieve is set.
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

	// Routed with the pool's imap policy: a delivery or a Sieve login
	// follows the user's live binding, else goes where an IMAP login would.
	LMTP        string `toml:"lmtp"`        // host:port
	ManageSieve string `toml:"managesieve"` // host:port
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
	OnActive   []string `toml:"on_active"`   // `sh -c` commands run after becoming active, asynchronously
	OnStandby  []string `toml:"on_standby"`  // `sh -c` commands run after becoming standby (and at start), asynchronously

	VIP         []string `toml:"vip"`          // prefixes mailproxy adds to interface while active, e.g. "192.0.2.100/24"
	Interface   string   `toml:"interface"`    // carries vip; required with vip; its loss makes the node standby
	Witness     string   `toml:"witness"`      // an IPv4 address on interface (the gateway) that must answer ARP before a takeover; "" = none
	HookTimeout Duration `toml:"hook_timeout"` // bound on each on_active/on_standby command; default 10s
	Listen2     string   `toml:"listen2"`      // UDP host:port of a second heartbeat path; with address2
	Address2    string   `toml:"address2"`     // the other instance's listen2; "" = one path
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

// Warnings lists settings that are valid but probably not meant.
func (c *Config) Warnings() []string {
	ck := &cfgChecker{lines: c.lines}
	if bt, lt := c.Limits.BackendTimeout.Duration, c.Limits.LoginTimeout.Duration; bt >= lt {
		ck.add("limits.backend_timeout", "%v is not shorter than limits.login_timeout (%v): a backend that never greets uses up the client's whole login time and the next backend is never tried", bt, lt)
	}
	if idle := c.Limits.IdleTimeout.Duration; c.hasProtocol("imap") && idle >= time.Minute && idle < 29*time.Minute {
		ck.add("limits.idle_timeout", "%v is below 29m: IMAP clients in IDLE may be cut off (RFC 9051 §5.4)", idle)
	}
	for i, l := range c.Listeners {
		for j, n := range l.ProxyProtocolTrusted {
			if p, err := ParseTrusted(n); err == nil && p.Bits() == 0 && l.ProxyProtocol {
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
	case "lmtp":
		return b.LMTP
	case "managesieve":
		return b.ManageSieve
	}
	return ""
}

// RoutingKey turns a login name into the routing key as username_case and
// default_domain say, so "Alice", "alice" and "alice@example.org" are one
// user. Every part of mailproxy that keys by user calls this one function.
func (a AuthConfig) RoutingKey(login string) string {
	return routing.Key(login, a.UsernameCase == "keep", a.DefaultDomain)
}

// protocolNames are the protocols a listener may speak.
func protocolNames() []string { return []string{"imap", "pop3", "smtp", "lmtp", "managesieve"} }

// IsUnixPath reports whether a listener address is a unix socket path
// (absolute), which lmtp listeners may have instead of host:port.
func IsUnixPath(addr string) bool { return strings.HasPrefix(addr, "/") }
