package config

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// This file reads a configuration: strict TOML decode (unknown keys, keys
// spelled in the wrong case and values of the wrong type are errors that
// name the key path and line), then defaults, then Validate (config.go).

// Load reads, decodes and validates the configuration file at path. It
// never reads the files the configuration names (certificates, secrets): that
// is left to the code that starts the server, so `mailproxy check` can run
// anywhere. Any error it returns, apart from the file not being readable, is
// a *Error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes and validates a configuration; name is the file name
// used in messages. The returned Config has its defaults applied. On failure
// the error is a *Error listing the problems: a TOML syntax error
// alone; otherwise values of the wrong type, unknown keys and every
// Validate problem of the rest together.
func Parse(data []byte, name string) (*Config, error) {
	text := string(data)
	var raw map[string]any
	if _, err := toml.Decode(text, &raw); err != nil {
		return nil, &Error{File: name, Problems: []Problem{syntaxProblem(err)}}
	}
	idx := indexKeys(text)
	ck := &cfgChecker{lines: idx.lines}
	var c Config
	if typeErrs := ck.walk("", reflect.TypeFor[Config](), raw); typeErrs {
		// walk took the values of the wrong type out of raw: the rest is
		// decoded and validated as if they were not written, so that one
		// run reports every problem, not only the first kind.
		var buf strings.Builder
		if err := toml.NewEncoder(&buf).Encode(raw); err != nil {
			return nil, &Error{File: name, Problems: sortProblems(ck.problems)}
		}
		text = buf.String()
	}
	cmd, err := toml.Decode(text, &c)
	if err != nil { // walk should have caught it
		return nil, &Error{File: name, Problems: append(ck.problems, Problem{Msg: err.Error(), Err: err})}
	}
	ck.undecoded(cmd.Undecoded(), idx)
	c.applyDefaults(&cmd, raw)
	c.source, c.lines = name, idx.lines
	ck.problems = append(ck.problems, c.problems()...)
	if len(ck.problems) > 0 {
		return nil, &Error{File: name, Problems: sortProblems(ck.problems)}
	}
	return &c, nil
}

// Problem is one thing wrong with a configuration.
type Problem struct {
	Key  string // indexed key path such as "listener[2].pool"; empty for syntax errors
	Line int    // 1-based line in the file; 0 when not known
	Msg  string
	Err  error // the underlying error (a toml.ParseError for syntax errors), if any
}

func (p Problem) Error() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Key != "" {
		b.WriteString(p.Key + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

func (p Problem) Unwrap() error { return p.Err }

// Error lists every problem found in one configuration, in line order.
type Error struct {
	File     string // as given to Parse; empty for a Config built in code
	Problems []Problem
}

func (e *Error) Error() string {
	prefix := ""
	if e.File != "" {
		prefix = e.File + ": "
	}
	if len(e.Problems) == 1 {
		return prefix + e.Problems[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s%d problems:", prefix, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n\t" + p.Error())
	}
	return b.String()
}

// Unwrap lets errors.As find the toml.ParseError of a syntax error.
func (e *Error) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

func syntaxProblem(err error) Problem {
	pe, ok := err.(toml.ParseError)
	if !ok {
		return Problem{Msg: err.Error(), Err: err}
	}
	return Problem{
		Line: pe.Position.Line,
		Msg:  fmt.Sprintf("column %d: TOML syntax: %s", pe.Position.Col, pe.Message),
		Err:  pe,
	}
}

// sortProblems orders problems by line; problems without a line keep their
// order and come last.
func sortProblems(ps []Problem) []Problem {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		switch {
		case a.Line == b.Line:
			return 0
		case a.Line == 0:
			return 1
		case b.Line == 0:
			return -1
		}
		return a.Line - b.Line
	})
	return ps
}

// cfgChecker collects problems, each with the line of its key (or of the
// nearest enclosing table written in the file).
type cfgChecker struct {
	lines    map[string]int
	problems []Problem
}

func (ck *cfgChecker) add(key, format string, args ...any) {
	ck.problems = append(ck.problems, Problem{Key: key, Line: keyLine(ck.lines, key), Msg: fmt.Sprintf(format, args...)})
}

func keyLine(lines map[string]int, key string) int {
	for key != "" {
		if n, ok := lines[key]; ok {
			return n
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			return 0
		}
		key = key[:i]
	}
	return 0
}

// walk compares the decoded document with the Go type it will be decoded
// into. The library matches keys case-insensitively and reports positions
// only per unindexed key, so this is where "Name =" and the second
// [[listener]]'s wrong value get their exact path and line. It reports
// whether a value had the wrong type (then the struct decode cannot run).
func (ck *cfgChecker) walk(path string, t reflect.Type, v any) (typeErr bool) {
	if u, ok := reflect.New(t).Interface().(toml.Unmarshaler); ok {
		if err := u.UnmarshalTOML(v); err != nil {
			ck.add(path, "%v", err)
			return true
		}
		return false
	}
	switch t.Kind() {
	case reflect.Pointer:
		return ck.walk(path, t.Elem(), v)
	case reflect.Struct:
		return ck.walkTable(path, t, v)
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return ck.wrongType(path, "table", v)
		}
		for _, k := range sortedRawKeys(m) {
			if ck.walk(keyPath(path, k), t.Elem(), m[k]) {
				typeErr = dropBad(m, k, t.Elem())
			}
		}
		return typeErr
	case reflect.Slice:
		elems, ok := rawSlice(v)
		if !ok {
			return ck.wrongType(path, "array", v)
		}
		for i, e := range elems {
			typeErr = ck.walk(fmt.Sprintf("%s[%d]", path, i), t.Elem(), e) || typeErr
		}
		return typeErr
	}
	ok := false
	switch t.Kind() {
	case reflect.String:
		_, ok = v.(string)
	case reflect.Bool:
		_, ok = v.(bool)
	case reflect.Int, reflect.Int64:
		_, ok = v.(int64)
	}
	if !ok {
		return ck.wrongType(path, tomlTypeName(reflect.Zero(t).Interface()), v)
	}
	return false
}

func (ck *cfgChecker) walkTable(path string, t reflect.Type, v any) (typeErr bool) {
	m, ok := v.(map[string]any)
	if !ok {
		return ck.wrongType(path, "table", v)
	}
	for _, k := range sortedRawKeys(m) {
		key := keyPath(path, k)
		f, exact := tomlField(t, k)
		switch {
		case f == nil:
			ck.add(key, "unknown key")
		case !exact:
			ck.add(key, "unknown key; keys are case-sensitive: did you mean %q?", tagName(*f))
		case ck.walk(key, f.Type, m[k]):
			typeErr = dropBad(m, k, f.Type) || typeErr
		}
	}
	return typeErr
}

// dropBad takes a value that had the wrong type out of its table, unless
// it is a table or an array of tables as it should be: then walk has
// taken the bad values out of those already. It returns true.
func dropBad(m map[string]any, k string, t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	_, table := m[k].(map[string]any)
	tables, _ := rawSlice(m[k])
	switch {
	case t.Kind() == reflect.Struct && table:
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct && tables != nil:
	default:
		delete(m, k)
	}
	return true
}

func (ck *cfgChecker) wrongType(path, want string, v any) bool {
	ck.add(path, "must be %s, not %s", article(want), article(tomlTypeName(v)))
	return true
}

func article(noun string) string {
	if strings.IndexByte("aeiou", noun[0]) >= 0 {
		return "an " + noun
	}
	return "a " + noun
}

// undecoded reports keys the library left undecoded that walk did not
// already report (walk should have found them all; this keeps the contract
// even if the two ever disagree).
func (ck *cfgChecker) undecoded(keys []toml.Key, idx *keyIndex) {
	reported := map[string]bool{}
	for _, p := range ck.problems {
		reported[p.Key] = true
	}
	seen := map[string]int{}
	for _, k := range keys {
		plain := k.String()
		occ := idx.byPlain[plain]
		path := plain
		if n := seen[plain]; n < len(occ) {
			path = occ[n]
		}
		seen[plain]++
		if !coveredByReported(reported, path) {
			ck.add(path, "unknown key")
			reported[path] = true
		}
	}
}

func coveredByReported(reported map[string]bool, key string) bool {
	for key != "" {
		if reported[key] {
			return true
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			return false
		}
		key = key[:i]
	}
	return false
}

// tomlField finds the struct field for a TOML key: exact tag match first,
// else a case-insensitive one (which the library would silently accept).
func tomlField(t reflect.Type, key string) (f *reflect.StructField, exact bool) {
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() || tagName(sf) == "-" {
			continue
		}
		if tagName(sf) == key {
			return &sf, true
		}
		if f == nil && strings.EqualFold(tagName(sf), key) {
			f = &sf
		}
	}
	return f, false
}

func tagName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "" {
		return f.Name
	}
	return name
}

func rawSlice(v any) ([]any, bool) {
	switch s := v.(type) {
	case []any:
		return s, true
	case []map[string]any:
		out := make([]any, len(s))
		for i := range s {
			out[i] = s[i]
		}
		return out, true
	}
	return nil, false
}

func sortedRawKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func tomlTypeName(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case bool:
		return "boolean"
	case int, int64:
		return "integer"
	case float64:
		return "float"
	case map[string]any:
		return "table"
	case []any, []map[string]any:
		return "array"
	case nil:
		return "nothing"
	}
	return "date/time"
}

// joinPath appends key components to an indexed key path, quoting them as
// TOML would.
func keyPath(path string, keys ...string) string {
	for _, k := range keys {
		q := toml.Key{k}.String()
		if path == "" {
			path = q
		} else {
			path += "." + q
		}
	}
	return path
}

// table returns the i-th element of the array of tables raw[key], or nil.
func rawTable(raw map[string]any, key string, i int) map[string]any {
	elems, _ := rawSlice(raw[key])
	if i >= len(elems) {
		return nil
	}
	m, _ := elems[i].(map[string]any)
	return m
}

// has reports whether m (a decoded TOML table, possibly nil) holds the key
// path.
func rawHas(m map[string]any, keys ...string) bool {
	for i, k := range keys {
		v, ok := m[k]
		if !ok {
			return false
		}
		if i < len(keys)-1 {
			if m, ok = v.(map[string]any); !ok {
				return false
			}
		}
	}
	return true
}

// applyDefaults fills in every key the file does not set. A key that is
// written keeps its value, even a zero one, so Validate can refuse
// "rise = 0" instead of silently replacing it, and `listen = ""` can mean
// off. The defaults are documented on the struct fields in config.go.
func (c *Config) applyDefaults(md *toml.MetaData, raw map[string]any) {
	set := func(dst *string, def string, keys ...string) {
		if !md.IsDefined(keys...) {
			*dst = def
		}
	}
	set(&c.Log.Level, "info", "log", "level")
	set(&c.Log.Format, "text", "log", "format")
	set(&c.Admin.Listen, "127.0.0.1:9025", "admin", "listen")
	set(&c.TLS.MinVersion, "1.2", "tls", "min_version")
	set(&c.Auth.Mode, "passthrough", "auth", "mode")
	set(&c.Auth.UsernameCase, "lower", "auth", "username_case")
	set(&c.Auth.BackendLogin, "user", "auth", "backend_login")
	c.Auth.applyDefaults(md)

	lim := &c.Limits
	defInt(&lim.MaxConnections, 20000, md.IsDefined("limits", "max_connections"))
	defInt(&lim.MaxConnectionsPerIP, 100, md.IsDefined("limits", "max_connections_per_ip"))
	defDur(&lim.LoginTimeout, 60*time.Second, md.IsDefined("limits", "login_timeout"))
	defDur(&lim.IdleTimeout, 30*time.Minute, md.IsDefined("limits", "idle_timeout"))
	defDur(&lim.AuthFailureDelay, 2*time.Second, md.IsDefined("limits", "auth_failure_delay"))
	defDur(&lim.ShutdownGrace, 10*time.Second, md.IsDefined("limits", "shutdown_grace"))
	defDur(&lim.BackendTimeout, 10*time.Second, md.IsDefined("limits", "backend_timeout"))
	defDur(&lim.ParkAfter, 250*time.Millisecond, md.IsDefined("limits", "park_after"))

	for i := range c.Listeners {
		l, m := &c.Listeners[i], rawTable(raw, "listener", i)
		defStr(&l.TLS, "none", rawHas(m, "tls"))
		defStr(&l.SMTPAuth, "off", rawHas(m, "smtp_auth"))
		if l.Protocol == "smtp" {
			defStr(&l.SMTPAuth, "optional", rawHas(m, "smtp_auth")) // mail clients look for AUTH
		}
		if l.ProxyProtocol && !rawHas(m, "proxy_protocol_trusted") {
			l.ProxyProtocolTrusted = []string{"127.0.0.0/8", "::1"} // a balancer on this host
		}
	}
	for i := range c.Pools {
		p, m := &c.Pools[i], rawTable(raw, "pool", i)
		p.applyDefaults(m)
	}
	if p := c.Peer; p != nil {
		defDur(&p.Interval, 100*time.Millisecond, md.IsDefined("peer", "interval"))
		defDur(&p.DeadAfter, 400*time.Millisecond, md.IsDefined("peer", "dead_after"))
		defDur(&p.HookTimeout, 10*time.Second, md.IsDefined("peer", "hook_timeout"))
	}
	c.storeDefaults(md)
}

func (p *PoolConfig) applyDefaults(m map[string]any) {
	defStr(&p.IMAP, "sticky", rawHas(m, "imap"))
	defStr(&p.POP3, "round-robin", rawHas(m, "pop3"))
	defStr(&p.SMTP, "round-robin", rawHas(m, "smtp"))
	defDur(&p.Linger, 60*time.Second, rawHas(m, "linger"))
	h := &p.Health
	defDur(&h.Interval, 2*time.Second, rawHas(m, "health", "interval"))
	defDur(&h.Timeout, time.Second, rawHas(m, "health", "timeout"))
	defInt(&h.Rise, 2, rawHas(m, "health", "rise"))
	defInt(&h.Fall, 2, rawHas(m, "health", "fall"))
	for j := range p.Backends {
		b, bm := &p.Backends[j], rawTable(m, "backend", j)
		defStr(&b.TLS, "none", rawHas(bm, "tls"))
		defInt(&b.Weight, 1, rawHas(bm, "weight"))
	}
}

func defStr(dst *string, def string, set bool) {
	if !set {
		*dst = def
	}
}

func defInt(dst *int, def int, set bool) {
	if !set {
		*dst = def
	}
}

func defDur(dst *Duration, def time.Duration, set bool) {
	if !set {
		dst.Duration = def
	}
}

// applyDefaults fills in the auth_http and [auth.penalty] keys.
func (a *AuthConfig) applyDefaults(md *toml.MetaData) {
	defDur(&a.HTTPTimeout, 5*time.Second, md.IsDefined("auth", "http_timeout"))
	defDur(&a.HTTPCacheTTL, 30*time.Second, md.IsDefined("auth", "http_cache_ttl"))
	p := &a.Penalty
	if !md.IsDefined("auth", "penalty", "enabled") {
		p.Enabled = true
	}
	defDur(&p.Window, 15*time.Minute, md.IsDefined("auth", "penalty", "window"))
	defDur(&p.MaxDelay, 15*time.Second, md.IsDefined("auth", "penalty", "max_delay"))
	defInt(&p.IPUserLimit, 10, md.IsDefined("auth", "penalty", "ip_user_limit"))
	defInt(&p.IPLimit, 1000, md.IsDefined("auth", "penalty", "ip_limit"))
	defInt(&p.UserLimit, 100, md.IsDefined("auth", "penalty", "user_limit"))
}
