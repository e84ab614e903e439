package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Validate reports every problem of the configuration at once, as a
// *Error whose problems name their key path ("listener[2].pool") and,
// for a loaded file, their line. It reads no files.
func (c *Config) Validate() error {
	if ps := c.problems(); len(ps) > 0 {
		return &Error{File: c.source, Problems: sortProblems(ps)}
	}
	return nil
}

func (c *Config) problems() []Problem {
	ck := &cfgChecker{lines: c.lines}
	c.checkGlobal(ck)
	pools := c.checkPools(ck)
	c.checkListeners(ck, pools)
	c.checkPeer(ck)
	c.checkStore(ck)
	return ck.problems
}

func (c *Config) checkGlobal(ck *cfgChecker) {
	ck.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	ck.oneOf("log.format", c.Log.Format, "text", "json")
	if c.Admin.Listen != "" && ck.addr("admin.listen", c.Admin.Listen, false) && c.Admin.TokenFile == "" && !loopback(c.Admin.Listen) {
		ck.add("admin.listen", "%q is reachable from other hosts and admin.token_file is not set: anyone there could drain and kick; set token_file, or listen on 127.0.0.1", c.Admin.Listen)
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
	ck.notNegative("limits.park_after", lim.ParkAfter)
	ck.positive("limits.backend_timeout", lim.BackendTimeout)

	a := c.Auth
	ck.oneOf("auth.mode", a.Mode, "passthrough", "verify", "http")
	ck.oneOf("auth.username_case", a.UsernameCase, "lower", "keep")
	ck.oneOf("auth.backend_login", a.BackendLogin, "user", "master")
	if strings.ContainsAny(a.DefaultDomain, "@ \t") {
		ck.add("auth.default_domain", "%q must be a bare domain such as \"example.org\"", a.DefaultDomain)
	}
	c.checkAuthHTTP(ck)
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
	if b.IMAP == "" && b.POP3 == "" && b.SMTP == "" && b.LMTP == "" && b.ManageSieve == "" {
		ck.add(key, "backend %q has none of imap, pop3, smtp, lmtp, managesieve", b.Name)
	}
	for _, proto := range protocolNames() {
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
		ck.oneOf(key+".protocol", l.Protocol, protocolNames()...)
		switch {
		case l.Address == "":
			ck.add(key+".address", "missing")
		case IsUnixPath(l.Address):
			if l.Protocol != "lmtp" {
				ck.add(key+".address", "a unix socket is for lmtp listeners only")
			}
			if l.ProxyProtocol {
				ck.add(key+".proxy_protocol", "needs a TCP address: a unix socket has no balancer to trust")
			}
		case ck.addr(key+".address", l.Address, false):
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
		case !slices.Contains(protocolNames(), l.Protocol):
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
	} else if l.APOP && c.Auth.Mode == "http" {
		ck.add(key+".apop", `not with auth.mode = "http": an auth_http service gets no APOP digest from mailproxy`)
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
		p, err := ParseTrusted(n)
		switch {
		case err != nil:
			ck.add(fmt.Sprintf("%s.proxy_protocol_trusted[%d]", key, j), "%q is not an address or a network such as \"192.0.2.0/24\"", n)
		case p != p.Masked():
			ck.add(fmt.Sprintf("%s.proxy_protocol_trusted[%d]", key, j), "%q has host bits set: write %q", n, p.Masked().String())
		}
	}
}

// ParseTrusted reads a network ("192.0.2.0/24") or a single address
// ("192.0.2.10", a /32 or /128). IPv4-mapped IPv6 is taken as IPv4.
func ParseTrusted(s string) (netip.Prefix, error) {
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
	ck.positive("peer.hook_timeout", p.HookTimeout)
	switch {
	case p.Address2 != "" && p.Listen2 == "":
		ck.add("peer.listen2", "missing: address2 needs a socket of its own")
	case p.Listen2 != "" && p.Address2 == "":
		ck.add("peer.address2", "missing: listen2 needs the other instance's second address")
	case p.Listen2 != "":
		ck.addr("peer.listen2", p.Listen2, false)
		ck.addr("peer.address2", p.Address2, true)
	}
	for i, v := range p.VIP {
		if _, err := netip.ParsePrefix(v); err != nil {
			ck.add(fmt.Sprintf("peer.vip[%d]", i), "%q is not an address with a prefix length, such as \"192.0.2.100/24\"", v)
		}
	}
	if len(p.VIP) > 0 && p.Interface == "" {
		ck.add("peer.interface", "missing: vip needs the interface that carries it")
	}
	if p.Witness != "" {
		if a, err := netip.ParseAddr(p.Witness); err != nil || !a.Is4() {
			ck.add("peer.witness", "%q is not an IPv4 address", p.Witness)
		} else if p.Interface == "" {
			ck.add("peer.interface", "missing: witness is asked on an interface")
		}
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

// loopback reports whether a listen address is reachable from this host
// only: a loopback IP or "localhost" (a wildcard or any other name is not).
func loopback(addr string) bool {
	host, _, _ := net.SplitHostPort(addr)
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// listenAddr is an address something listens on; a wildcard host ("", 0.0.0.0,
// ::) conflicts with every host on the same port.
type listenAddr struct{ key, host, port string }

func (ck *cfgChecker) claim(binds []listenAddr, key, addr string) []listenAddr {
	host, port, _ := net.SplitHostPort(addr)
	if n, err := strconv.Atoi(port); err == nil {
		port = strconv.Itoa(n) // "09143" is 9143
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" {
		host = "127.0.0.1" // where Go's Listen binds "localhost"
	}
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

// checkAuthHTTP checks the auth_http keys and [auth.penalty].
func (c *Config) checkAuthHTTP(ck *cfgChecker) {
	a := c.Auth
	if a.Mode == "http" {
		if u, err := url.Parse(a.HTTPURL); a.HTTPURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			ck.add("auth.http_url", `%q: auth.mode = "http" needs an http:// or https:// URL`, a.HTTPURL)
		}
		if a.BackendLogin == "master" {
			ck.add("auth.backend_login", `"master" needs auth.mode = "verify"; with "http" the service's Auth-User and Auth-Pass say how to log in`)
		}
	}
	ck.positive("auth.http_timeout", a.HTTPTimeout)
	ck.notNegative("auth.http_cache_ttl", a.HTTPCacheTTL)
	p := a.Penalty
	ck.positive("auth.penalty.window", p.Window)
	ck.notNegative("auth.penalty.max_delay", p.MaxDelay)
	ck.atLeast("auth.penalty.ip_user_limit", p.IPUserLimit, 0)
	ck.atLeast("auth.penalty.ip_limit", p.IPLimit, 0)
	ck.atLeast("auth.penalty.user_limit", p.UserLimit, 0)
}
