// Package peer runs mailproxy's active/standby pair ([peer] in the
// config): two instances send each other authenticated UDP heartbeats,
// elect one of them active, and switch the client listeners and the
// on_active/on_standby commands with the role.
//
// The pieces, one file each: the datagram and its HMAC (message.go), the
// replay guard (replay.go), the election as a pure function (election.go),
// the heartbeat loop that owns the state (loop.go), and the goroutine that
// applies a role to the server and runs the commands (switch.go,
// commands.go).
package peer

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"mailproxy/proxy/config"
)

// Service is what a role switches; the server implements it (the guard is
// in cmd/mailproxy, which wires the two).
type Service interface {
	// OpenListeners opens every client listener and serves it; an error
	// means none is open and the call is retried.
	OpenListeners() error
	// CloseListeners closes them again; live sessions go on.
	CloseListeners()
	// CloseSessions ends every live session and says how many there were.
	CloseSessions() int
}

// Defaults of Options.
const (
	DefaultCommandTimeout = 10 * time.Second
	DefaultMaxSkew        = 10 * time.Second
)

// Options are the parts of a Node that are not in [peer]. Zero values take
// the defaults noted.
type Options struct {
	Logger *slog.Logger // default slog.Default()
	// Conn carries the heartbeats; default a UDP socket on [peer] listen.
	// Run closes it when it returns, either way.
	Conn net.PacketConn
	// Secret is the shared HMAC key; default the content of [peer]
	// secret_file without surrounding white space (see ReadSecret).
	Secret []byte
	// Service is switched with the role; nil switches nothing (the role is
	// only reported).
	Service Service
	// OnRole, when set, is called after each role has been applied (the
	// listeners opened or closed, the commands run), in order, from one
	// goroutine, starting with the standby every node starts in. It must
	// not block for long: the next role waits for it.
	OnRole func(Role)
	// CommandTimeout bounds each on_active and on_standby command; default
	// DefaultCommandTimeout.
	CommandTimeout time.Duration
	// MaxSkew is how far a heartbeat's send time may be from our clock;
	// default DefaultMaxSkew. The two nodes' clocks must agree this well
	// (NTP does), or they stop believing each other.
	MaxSkew time.Duration
}

// Node is one instance of the pair. Build it with New and run it with Run;
// Status is safe to call at any time from any goroutine.
type Node struct {
	cfg    config.PeerConfig
	opts   Options
	log    *slog.Logger
	secret []byte
	self   member

	mu sync.Mutex
	st Status
}

// Status is a snapshot of a Node, as GET /status shows it.
type Status struct {
	Node     string     `json:"node"`
	Role     string     `json:"role"`   // the elected role: active | standby
	Reason   string     `json:"reason"` // why, as the election said
	Since    time.Time  `json:"since"`  // when the role was elected
	Priority int        `json:"priority"`
	Preempt  bool       `json:"preempt"`
	Peer     PeerStatus `json:"peer"`
}

// PeerStatus is what a Node knows of the other one.
type PeerStatus struct {
	Address   string    `json:"address"`              // [peer] address
	Node      string    `json:"node,omitempty"`       // empty until heard
	Alive     bool      `json:"alive"`                // heard within dead_after, not leaving
	Role      string    `json:"role,omitempty"`       // as its last heartbeat said
	Priority  int       `json:"priority"`             // as its last heartbeat said
	LastHeard time.Time `json:"last_heard,omitzero"`  // our clock
	Heard     uint64    `json:"heard"`                // heartbeats accepted
	Rejected  uint64    `json:"rejected"`             // datagrams refused: bad MAC, replay, own name, malformed
	LastError string    `json:"last_error,omitempty"` // why the last one was refused
}

// New builds a node from a validated [peer] table. It reads the secret
// file unless Options.Secret is set; it opens no socket yet. Run it once.
func New(cfg *config.PeerConfig, opts Options) (*Node, error) {
	if cfg.Node == "" || len(cfg.Node) > maxNodeLen {
		return nil, fmt.Errorf("peer: node name must be 1 to %d bytes long", maxNodeLen)
	}
	if cfg.Priority < math.MinInt32 || cfg.Priority > math.MaxInt32 {
		return nil, fmt.Errorf("peer: priority %d does not fit in 32 bits", cfg.Priority)
	}
	if cfg.Interval.Duration <= 0 || cfg.DeadAfter.Duration <= cfg.Interval.Duration {
		return nil, fmt.Errorf("peer: need 0 < interval (%v) < dead_after (%v)", cfg.Interval, cfg.DeadAfter)
	}
	n := &Node{cfg: *cfg, opts: opts, log: opts.Logger, secret: opts.Secret,
		self: member{node: cfg.Node, priority: int32(cfg.Priority)}}
	if n.log == nil {
		n.log = slog.Default()
	}
	n.log = n.log.With("node", cfg.Node)
	if n.opts.CommandTimeout <= 0 {
		n.opts.CommandTimeout = DefaultCommandTimeout
	}
	if n.opts.MaxSkew <= 0 {
		n.opts.MaxSkew = DefaultMaxSkew
	}
	if n.secret == nil {
		s, err := ReadSecret(cfg.SecretFile)
		if err != nil {
			return nil, err
		}
		n.secret = s
	}
	n.st = Status{Node: cfg.Node, Role: Standby.String(), Reason: "starting", Since: time.Now(),
		Priority: cfg.Priority, Preempt: cfg.Preempt, Peer: PeerStatus{Address: cfg.Address}}
	return n, nil
}

// ReadSecret reads a shared-secret file: its content without surrounding
// white space, which must not be empty. Both nodes must read the same.
func ReadSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("peer: read secret: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil, fmt.Errorf("peer: secret file %s is empty", path)
	}
	return []byte(s), nil
}

// Status returns a snapshot of the node and what it knows of its peer.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.st
}

func (n *Node) setStatus(f func(*Status)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f(&n.st)
}

// Run sends and receives heartbeats and switches the role until ctx is
// done. The node starts as standby and becomes active when it hears no
// peer for dead_after, or as the election says once it does.
//
// When ctx is done, Run tells the peer it is leaving (so the peer takes
// over at once rather than after dead_after), closes the listeners if it
// was active and runs on_standby, and returns nil. It leaves live sessions
// to the caller's Server.Shutdown. An error means Run could not start.
func (n *Node) Run(ctx context.Context) error {
	conn := n.opts.Conn
	if conn == nil {
		c, err := net.ListenPacket("udp", n.cfg.Listen)
		if err != nil {
			return fmt.Errorf("peer: listen %s: %w", n.cfg.Listen, err)
		}
		conn = c
	}
	n.log.Info("peer starting", "priority", n.cfg.Priority, "preempt", n.cfg.Preempt,
		"listen", conn.LocalAddr().String(), "peer", n.cfg.Address,
		"interval", n.cfg.Interval.String(), "dead_after", n.cfg.DeadAfter.String())
	l := newLoop(n, conn)
	l.discard()
	pkts, done := make(chan datagram), make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { l.read(pkts, done) })
	if err := l.resolve(ctx); err != nil {
		wg.Go(func() { l.resolveLater(ctx, err) })
	}
	switched := make(chan struct{})
	go func() { defer close(switched); n.actuate(ctx, l.want) }()
	l.run(ctx, pkts)
	<-switched
	close(done)
	conn.Close()
	wg.Wait()
	n.log.Info("peer stopped")
	return nil
}

// env is what on_active and on_standby commands find in their environment.
func (n *Node) env(r Role) []string {
	return []string{"MAILPROXY_NODE=" + n.cfg.Node, "MAILPROXY_ROLE=" + r.String()}
}
