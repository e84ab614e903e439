package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"mailproxy/proxy/peer"
)

// ErrUsage marks a ctl command line that is wrong; the caller prints the
// usage.
var ErrUsage = errors.New("usage")

// CtlUsage lists the commands of Ctl.
const CtlUsage = `commands:
  status                  listeners, and each backend's state, sessions and users
  drain POOL BACKEND      send no new users to BACKEND; its live users keep coming
  undrain POOL BACKEND    end a drain
  kick POOL BACKEND       close every session on BACKEND now
  weight POOL BACKEND N   set BACKEND's weight for new users (0: none by hashing)
  pin USER POOL [BACKEND] pin USER to BACKEND; without BACKEND, unpin
  move USER POOL BACKEND  re-point USER to BACKEND and close its sessions elsewhere
  user NAME               where NAME is routed, and its live sessions
  reload                  load, check and apply the config file (as SIGHUP)
`

// Ctl runs one `mailproxy ctl` command (args: the command and its
// arguments) through c and writes a readable answer to w. A wrong command
// line is an error wrapping ErrUsage; an error from the server carries its
// message.
func Ctl(ctx context.Context, c *Client, args []string, out io.Writer) error {
	w := out
	if len(args) == 0 {
		return fmt.Errorf("%w: no command", ErrUsage)
	}
	cmd, args := args[0], args[1:]
	want := map[string]int{"status": 0, "user": 1, "drain": 2, "undrain": 2, "kick": 2, "weight": 3, "pin": 3, "move": 3, "reload": 0}
	n, ok := want[cmd]
	switch {
	case !ok:
		return fmt.Errorf("%w: unknown command %q", ErrUsage, cmd)
	case cmd == "pin" && len(args) == 2:
		args = append(args, "") // unpin
	case len(args) != n:
		return fmt.Errorf("%w: %s takes %d arguments, not %d", ErrUsage, cmd, n, len(args))
	}
	switch cmd {
	case "weight":
		n, err := strconv.Atoi(args[2])
		if err != nil || n < 0 {
			return fmt.Errorf("%w: weight %q is not a number >= 0", ErrUsage, args[2])
		}
		res, err := c.Weight(ctx, args[0], args[1], n)
		if err != nil {
			return err
		}
		return printResult(out, res)
	case "pin", "move":
		call := c.Pin
		if cmd == "move" {
			call = c.Move
		}
		res, err := call(ctx, args[0], args[1], args[2])
		if err != nil {
			return err
		}
		return printUserResult(w, res)
	case "status":
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		return printStatus(w, st)
	case "user":
		us, err := c.User(ctx, args[0])
		if err != nil {
			return err
		}
		return printUser(w, us)
	case "reload":
		res, err := c.Reload(ctx)
		if err != nil {
			return err
		}
		return printReload(w, res)
	}
	call := map[string]func(context.Context, string, string) (*Result, error){
		"drain": c.Drain, "undrain": c.Undrain, "kick": c.Kick,
	}[cmd]
	res, err := call(ctx, args[0], args[1])
	if err != nil {
		return err
	}
	return printResult(w, res)
}

func printUserResult(w io.Writer, r *UserResult) error {
	switch {
	case r.Action == "move":
		_, err := fmt.Fprintf(w, "%s moved to %s in pool %s; %d sessions closed here\n", r.User, r.Backend, r.Pool, r.Kicked)
		return err
	case r.Backend == "":
		_, err := fmt.Fprintf(w, "%s unpinned in pool %s\n", r.User, r.Pool)
		return err
	}
	_, err := fmt.Fprintf(w, "%s pinned to %s in pool %s\n", r.User, r.Backend, r.Pool)
	return err
}

func printStatus(w io.Writer, st *Status) error {
	fmt.Fprintf(w, "node %s, %s\n", orDash(st.Node), st.Role)
	if st.Peer != nil {
		fmt.Fprintf(w, "%s\n", peerLine(st.RoleReason, st.Peer))
	}
	if p := st.Pair; p != nil && len(p.VIP) > 0 {
		fmt.Fprintf(w, "vip %s on %s (link up: %v), %d announcements, %d takeovers, %d conflicts\n",
			strings.Join(p.VIP, " "), p.Interface, p.LinkUp, p.Announcements, p.Takeovers, p.Conflicts)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tPROTOCOL\tADDRESS\tTLS\tPOOL")
	for _, l := range st.Listeners {
		addr := l.Address
		if !l.Serving {
			addr += " (not serving)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.Name, l.Protocol, addr, l.TLS, l.Pool)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tBACKEND\tSTATE\tSESSIONS\tUSERS\tWEIGHT\tHEALTH")
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			state := b.State
			if b.Removed {
				state = "removed" // from the config; live sessions hold it
			}
			if b.Draining && state != "draining" {
				state += ",draining" // down wins the state; do not hide the drain
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", p.Name, b.Name, state, b.Sessions, b.Users, b.Weight, health(b.Health, b.Reason))
		}
	}
	return tw.Flush()
}

// peerLine is "peer lb2 (192.0.2.2:7946): active, priority 100, heard 120ms ago; role: lb2 is active".
func peerLine(reason string, p *peer.PeerStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "peer %s (%s): ", orDash(p.Node), p.Address)
	switch {
	case p.Node == "":
		b.WriteString("never heard")
	case p.Alive:
		fmt.Fprintf(&b, "%s, priority %d, heard %v ago", p.Role, p.Priority, time.Since(p.LastHeard).Round(time.Millisecond))
	default:
		fmt.Fprintf(&b, "lost, last heard %v ago as %s", time.Since(p.LastHeard).Round(time.Millisecond), p.Role)
	}
	if p.Rejected > 0 {
		fmt.Fprintf(&b, "; %d datagrams rejected, last: %s", p.Rejected, p.LastError)
	}
	if reason != "" {
		fmt.Fprintf(&b, "; role: %s", reason)
	}
	return b.String()
}

// health is "imap=up pop3=down (connect: ... refused)": a reason only
// where a protocol is down.
func health(h, reason map[string]string) string {
	var parts []string
	for _, proto := range []string{"imap", "pop3", "smtp", "lmtp", "managesieve"} {
		s, ok := h[proto]
		if !ok {
			continue
		}
		part := proto + "=" + s
		if s == "down" && reason[proto] != "" {
			part += " (" + reason[proto] + ")"
		}
		parts = append(parts, part)
	}
	return orDash(strings.Join(parts, " "))
}

func printUser(w io.Writer, us *UserStatus) error {
	fmt.Fprintf(w, "user %s\n\n", us.User)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tBOUND TO\tLIVE\tPIN\tSESSIONS")
	for _, p := range us.Pools {
		bound := p.Backend
		if bound != "" && p.Live == 0 {
			bound += " (lingering)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", p.Pool, orDash(bound), p.Live, orDash(p.Pin), sessions(p))
	}
	return tw.Flush()
}

// sessions is "mail1 imap×2, mail1 pop3".
func sessions(p UserPool) string {
	type key struct{ backend, proto string }
	count := map[key]int{}
	var order []key
	for _, s := range p.Sessions {
		k := key{s.Backend, s.Protocol}
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	slices.SortFunc(order, func(a, b key) int { return strings.Compare(a.backend+" "+a.proto, b.backend+" "+b.proto) })
	var parts []string
	for _, k := range order {
		s := k.backend + " " + k.proto
		if n := count[k]; n > 1 {
			s += fmt.Sprintf("×%d", n)
		}
		parts = append(parts, s)
	}
	return orDash(strings.Join(parts, ", "))
}

func printResult(w io.Writer, r *Result) error {
	var err error
	switch r.Action {
	case "drain":
		state := "draining"
		if r.State != "draining" {
			state += " (and " + r.State + ")"
		}
		_, err = fmt.Fprintf(w, "%s/%s is %s: no new users; %d sessions left\n", r.Pool, r.Backend, state, r.Sessions)
	case "undrain":
		_, err = fmt.Fprintf(w, "%s/%s is %s: takes new users again\n", r.Pool, r.Backend, r.State)
	case "weight":
		_, err = fmt.Fprintf(w, "%s/%s has weight %d; it is %s\n", r.Pool, r.Backend, r.Weight, r.State)
	default:
		_, err = fmt.Fprintf(w, "kicked %d sessions on %s/%s; %d left; it is %s\n", r.Kicked, r.Pool, r.Backend, r.Sessions, r.State)
	}
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
