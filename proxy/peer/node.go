// Package peer runs mailproxy's active/standby pair ([peer] in the
// config): two instances send each other authenticated UDP heartbeats,
// elect one of them active, and switch the client listeners with the
// role; the on_active/on_standby commands run after each switch.
//
// With [peer] vip and interface, the node itself adds the virtual
// addresses on becoming active, announces them (gratuitous ARP,
// unsolicited neighbour advertisements) and removes them on becoming
// standby, at start and when the interface loses its link.
//
// The pieces, one file each: the datagram and its HMAC (message.go), the
// replay guard (replay.go), the election as a pure function (election.go),
// the heartbeat loop that owns the state (loop.go; on Linux it polls its
// sockets itself, poll_linux.go), its sockets and readers, one per
// heartbeat path (path.go), the goroutine that
// applies a role to the server and the addresses (switch.go), the
// addresses themselves (vip.go, vip_linux.go), the commands
// (commands.go) and the metrics (metrics.go).
package peer

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mailproxy/proxy/config"
)

// Service is what a role switches; the server implements it (the guard is
// in cmd/mailproxy, which wires the two). A Service that also has a
// HoldListeners() error method, as the server does, has it called at
// start, so that it binds the listeners' addresses while standby and
// activation only has to listen.
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
	// Conn2 carries the second path's heartbeats when [peer] address2 is
	// set; default a UDP socket on listen2. Run closes it too.
	Conn2 net.PacketConn
	// Secret is the shared HMAC key; default the content of [peer]
	// secret_file without surrounding white space (see ReadSecret).
	Secret []byte
	// Service is switched with the role; nil switches nothing (the role is
	// only reported).
	Service Service
	// OnRole, when set, is called after each role has been applied (the
	// listeners and addresses switched; the commands may still run), in
	// order, from one goroutine, starting with the standby every node
	// starts in. It must not block for long: the next role waits for it.
	OnRole func(Role)
	// CommandTimeout bounds each on_active and on_standby command; default
	// [peer] hook_timeout, else DefaultCommandTimeout.
	CommandTimeout time.Duration
	// Shared, when set, returns what this node shares with its peer (the
	// admin state); it is sent whenever the peer appears or comes back.
	// It runs on the heartbeat goroutine and must be quick; at most
	// MaxPayload bytes, nil for nothing.
	Shared func() []byte
	// OnShared, when set, gets each payload the peer shares (Node.Share,
	// Shared), once per distinct payload. It runs on the heartbeat
	// goroutine and must be quick.
	OnShared func([]byte)
	// MaxSkew is how far a heartbeat's send time may be from our clock;
	// default DefaultMaxSkew. The two nodes' clocks must agree this well
	// (NTP does), or they stop believing each other.
	MaxSkew time.Duration
}

// Node is one instance of the pair. Build it with New and run it with Run;
// Status is safe to call at any time from any goroutine.
type Node struct {
	cfg     config.PeerConfig
	opts    Options
	log     *slog.Logger
	secret  []byte
	self    member
	addr    addresser              // nil without [peer] vip
	witness netip.Addr             // [peer] witness; invalid: none
	sharec  chan<- []byte          // to the running loop; nil before Run
	linkc   chan bool              // the interface's state, newest first, to the loop
	poke    atomic.Pointer[func()] // wakes a polling loop (runPolled) for news on its channels

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

	Applied       string   `json:"applied"`             // the role in force: listeners, addresses
	VIP           []string `json:"vip,omitempty"`       // [peer] vip
	Interface     string   `json:"interface,omitempty"` // [peer] interface
	LinkUp        bool     `json:"link_up"`             // the interface is up with carrier (true without one)
	Announcements uint64   `json:"announcements"`       // gratuitous ARPs and neighbour advertisements sent
	Takeovers     uint64   `json:"takeovers"`           // times this node became active
	Conflicts     uint64   `json:"conflicts"`           // times both nodes were found active
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
	n := &Node{cfg: *cfg, opts: opts, log: opts.Logger, secret: opts.Secret, linkc: make(chan bool, 1),
		self: member{node: cfg.Node, priority: int32(cfg.Priority)}}
	if n.log == nil {
		n.log = slog.Default()
	}
	n.log = n.log.With("node", cfg.Node)
	if n.opts.CommandTimeout <= 0 {
		n.opts.CommandTimeout = cmp.Or(cfg.HookTimeout.Duration, DefaultCommandTimeout)
	}
	if len(cfg.VIP) > 0 || cfg.Witness != "" {
		vips, err := parseVIPs(cfg.VIP)
		if err != nil {
			return nil, err
		}
		if n.addr, err = newAddresser(cfg.Interface, vips); err != nil {
			return nil, err
		}
	}
	if cfg.Witness != "" {
		w, err := netip.ParseAddr(cfg.Witness)
		if err != nil {
			return nil, fmt.Errorf("peer: witness: %w", err)
		}
		n.witness = w
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
		Priority: cfg.Priority, Preempt: cfg.Preempt, Peer: PeerStatus{Address: cfg.Address},
		Applied: Standby.String(), VIP: cfg.VIP, Interface: cfg.Interface, LinkUp: true}
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
	paths, err := n.openPaths()
	if err != nil {
		return err
	}
	attrs := []any{"priority", n.cfg.Priority, "preempt", n.cfg.Preempt,
		"listen", paths[0].conn.LocalAddr().String(), "peer", n.cfg.Address,
		"interval", n.cfg.Interval.String(), "dead_after", n.cfg.DeadAfter.String()}
	if len(paths) > 1 {
		attrs = append(attrs, "listen2", paths[1].conn.LocalAddr().String(), "peer2", n.cfg.Address2)
	}
	n.log.Info("peer starting", attrs...)
	l := newLoop(n, paths)
	l.discard()
	l.polled = pollable(paths)
	n.mu.Lock()
	n.sharec = l.sharec
	n.mu.Unlock()
	pkts, done := make(chan datagram), make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range paths {
		if !l.polled {
			wg.Go(func() { l.read(p, pkts, done) })
		}
		if err := p.resolve(ctx); err != nil {
			wg.Go(func() { l.resolveLater(ctx, p, err) })
		}
	}
	if n.cfg.Interface != "" {
		wg.Go(func() { n.watchLink(ctx) })
	}
	switched := make(chan struct{})
	go func() { defer close(switched); n.actuate(ctx, l.want, l.reannounce) }()
	l.run(ctx, pkts)
	<-switched
	close(done)
	for _, p := range paths {
		p.conn.Close()
	}
	wg.Wait()
	n.log.Info("peer stopped")
	return nil
}

// openPaths opens the heartbeat sockets: [peer] listen (or Options.Conn),
// and listen2 (or Options.Conn2) when address2 is set.
func (n *Node) openPaths() ([]*path, error) {
	open := func(conn net.PacketConn, listen, addr string) (*path, error) {
		if conn == nil {
			c, err := net.ListenPacket("udp", listen)
			if err != nil {
				return nil, fmt.Errorf("peer: listen %s: %w", listen, err)
			}
			conn = c
		}
		return &path{conn: conn, addr: addr}, nil
	}
	p, err := open(n.opts.Conn, n.cfg.Listen, n.cfg.Address)
	if err != nil {
		return nil, err
	}
	paths := []*path{p}
	if n.cfg.Address2 != "" {
		p2, err := open(n.opts.Conn2, n.cfg.Listen2, n.cfg.Address2)
		if err != nil {
			p.conn.Close()
			return nil, err
		}
		paths = append(paths, p2)
	}
	return paths, nil
}

// Share sends b (at most MaxPayload bytes) to the peer, signed, on the
// next heartbeats; the peer's Options.OnShared gets it. It never blocks;
// before Run, or with too many shares waiting, it drops b and reports
// false. Each b should be the whole state to share, not a change, so that
// a lost one is healed by the next.
func (n *Node) Share(b []byte) bool {
	n.mu.Lock()
	c := n.sharec
	n.mu.Unlock()
	if c == nil || len(b) > MaxPayload {
		return false
	}
	select {
	case c <- bytes.Clone(b):
		n.wake()
		return true
	default:
		return false
	}
}

// watchLink feeds the interface's state to the loop; the newest state
// replaces one not yet taken.
func (n *Node) watchLink(ctx context.Context) {
	err := watchLink(ctx, n.cfg.Interface, n.setLink)
	if err != nil {
		n.log.Error("interface not watched: a lost link is noticed only by the peer", "interface", n.cfg.Interface, "err", err)
	}
}

// setLink hands the interface's state to the loop; it replaces a state
// the loop has not taken yet.
func (n *Node) setLink(up bool) {
	select {
	case <-n.linkc:
	default:
	}
	n.linkc <- up
	n.wake()
}

// wake tells a polling loop that something waits on its channels.
func (n *Node) wake() {
	if f := n.poke.Load(); f != nil {
		(*f)()
	}
}

// env is what on_active and on_standby commands find in their environment.
func (n *Node) env(r Role) []string {
	return []string{"MAILPROXY_NODE=" + n.cfg.Node, "MAILPROXY_ROLE=" + r.String()}
}
