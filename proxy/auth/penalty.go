package auth

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"mailproxy/protocols"
)

// RefusalMessage is the fixed message of the log line written for every
// login refused by the penalty; fail2ban filters match it (README).
const RefusalMessage = "login refused: too many failed logins"

// The scopes of a refusal, in the log line and the metrics.
const (
	ScopeIPUser = "ip-user" // one user from one address
	ScopeIP     = "ip"      // every user from one address
)

// PenaltyOptions configure a Penalty. Zero limits switch that refusal off.
type PenaltyOptions struct {
	// Window is how long a failure counts (a sliding window); required.
	Window time.Duration
	// BaseDelay is the wait before the reply to a user's first failed
	// login from an address; it doubles with each further failure, up to
	// MaxDelay (Dovecot's auth penalty: 2 s doubling to 15 s).
	BaseDelay, MaxDelay time.Duration
	// IPUserLimit: a user with this many failures from one address is
	// refused from that address (other users of it are not).
	IPUserLimit int
	// IPLimit: an address with this many failures, all users together,
	// is refused. Set it high where many users share one NAT address.
	IPLimit int
	// UserLimit: a user with this many failures from all addresses
	// together gets MaxDelay on every failure (a guessing attack spread
	// over many addresses); never a refusal, which would let anyone lock
	// anyone out.
	UserLimit int
	// Counter holds the counts; default a MemCounter. A shared store lets
	// several instances count together.
	Counter Counter
	// Normalize turns a login name into the user key (the routing key);
	// default unchanged.
	Normalize func(string) string
	// Log receives the refusal lines; default slog.Default(). It should
	// carry no attributes of its own, so that the line keeps its format.
	Log *slog.Logger
	// Now and Wait are the clock; default time.Now and a timer. Tests
	// inject their own.
	Now  func() time.Time
	Wait func(ctx context.Context, d time.Duration)
	// OnFailure and OnRefusal, when set, count for the metrics.
	OnFailure func()
	OnRefusal func(scope string)
}

// Penalty is brute-force protection: it counts failed logins per client
// address, per user and per user from an address, slows the replies to
// failures and refuses logins beyond the limits. Safe for concurrent use.
type Penalty struct{ o PenaltyOptions }

// NewPenalty returns a Penalty with opts' defaults filled in.
func NewPenalty(opts PenaltyOptions) *Penalty {
	if opts.Counter == nil {
		opts.Counter = NewMemCounter(0)
	}
	if opts.Normalize == nil {
		opts.Normalize = func(s string) string { return s }
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Wait == nil {
		opts.Wait = sleep
	}
	return &Penalty{o: opts}
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Delay is the wait after the n-th failure: BaseDelay doubled n-1 times,
// at most MaxDelay.
func (p *Penalty) Delay(n int) time.Duration {
	d := p.o.BaseDelay
	for i := 1; i < n && d < p.o.MaxDelay; i++ {
		d *= 2
	}
	if p.o.MaxDelay > 0 && d > p.o.MaxDelay {
		d = p.o.MaxDelay
	}
	return d
}

// Guard returns the protocols.LoginGuard of a session from client
// address ip (no port). An IPv6 address counts as its /64, which one
// host or LAN usually has whole: an attacker there must not get a fresh
// count for every address.
func (p *Penalty) Guard(ip string) *Guard { return &Guard{p: p, ip: ip, key: counted(ip)} }

// Guard is the Penalty as seen from one client address.
type Guard struct {
	p   *Penalty
	ip  string // for the log
	key string // for the counters
}

func counted(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Unmap().Is4() {
		return ip
	}
	p, _ := a.Prefix(64)
	return p.String()
}

var _ protocols.LoginGuard = (*Guard)(nil)

func (g *Guard) keys(user string) (pair, ip, u string) {
	user = g.p.o.Normalize(user)
	return "iu:" + g.key + "\x00" + user, "i:" + g.key, "u:" + user
}

// Allow implements protocols.LoginGuard. A counter that cannot be read
// (a shared store down) lets the login through: the backend still checks it.
func (g *Guard) Allow(ctx context.Context, user string) error {
	o, now := &g.p.o, g.p.o.Now()
	pairKey, ipKey, _ := g.keys(user)
	scope, n := "", 0
	if o.IPUserLimit > 0 {
		if c, err := o.Counter.Count(ctx, pairKey, now, o.Window); err == nil && c >= o.IPUserLimit {
			scope, n = ScopeIPUser, c
		}
	}
	if scope == "" && o.IPLimit > 0 {
		if c, err := o.Counter.Count(ctx, ipKey, now, o.Window); err == nil && c >= o.IPLimit {
			scope, n = ScopeIP, c
		}
	}
	if scope == "" {
		return nil
	}
	// Fixed format for fail2ban: client_ip right after the message, before
	// the user name, which the client chose.
	o.Log.Warn(RefusalMessage, "client_ip", g.ip, "user", user, "scope", scope, "failures", n)
	if o.OnRefusal != nil {
		o.OnRefusal(scope)
	}
	o.Wait(ctx, o.MaxDelay)
	return protocols.ErrLoginRefused
}

// Failed implements protocols.LoginGuard: Record, then wait.
func (g *Guard) Failed(ctx context.Context, user string) {
	g.p.o.Wait(ctx, g.Record(ctx, user))
}

// Record counts a failed login of user and returns the penalty delay,
// for a caller that waits itself.
func (g *Guard) Record(ctx context.Context, user string) time.Duration {
	o, now := &g.p.o, g.p.o.Now()
	pairKey, ipKey, userKey := g.keys(user)
	n, _ := o.Counter.Add(ctx, pairKey, now, o.Window)
	o.Counter.Add(ctx, ipKey, now, o.Window)
	d := g.p.Delay(max(n, 1))
	if user != "" {
		if u, err := o.Counter.Add(ctx, userKey, now, o.Window); err == nil && o.UserLimit > 0 && u >= o.UserLimit {
			d = o.MaxDelay
		}
	}
	if o.OnFailure != nil {
		o.OnFailure()
	}
	return d
}

// Succeeded implements protocols.LoginGuard: the user's failures from
// this address are forgotten, and the user's own count. The address's
// count stays: one good account must not buy an attacker new tries.
func (g *Guard) Succeeded(user string) {
	pairKey, _, userKey := g.keys(user)
	ctx := context.Background()
	g.p.o.Counter.Reset(ctx, pairKey)
	g.p.o.Counter.Reset(ctx, userKey)
}
