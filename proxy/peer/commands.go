package peer

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"
)

// maxOutput is how much of a command's output is logged.
const maxOutput = 4 << 10

// runCommands runs on_active or on_standby: each command through `sh -c`,
// one after another, each under timeout, with MAILPROXY_NODE and
// MAILPROXY_ROLE in its environment. Every command is logged with its exit
// status and output. A failing command neither stops the rest nor changes
// the role: the commands serve the role, they do not decide it.
func runCommands(ctx context.Context, log *slog.Logger, event string, cmds []string, timeout time.Duration, env []string) {
	for _, c := range cmds {
		if ctx.Err() != nil {
			log.Warn("peer command not run: the role changed", "event", event, "command", c)
			continue
		}
		start := time.Now()
		out, err := runCommand(ctx, c, timeout, env)
		attrs := []any{"event", event, "command", c, "duration", time.Since(start).Round(time.Millisecond).String(), "output", out}
		if err != nil {
			log.Error("peer command failed", append(attrs, "err", err)...)
			continue
		}
		log.Info("peer command done", append(attrs, "status", 0)...)
	}
}

// runCommand runs one command line and returns its combined output, cut
// at maxOutput. A command that outlives timeout is killed; WaitDelay stops
// a background child that kept the output pipe from holding us too.
func runCommand(ctx context.Context, line string, timeout time.Duration, env []string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	cmd.Env = append(os.Environ(), env...)
	var out capped
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	text := strings.TrimSpace(out.b.String())
	var exit *exec.ExitError
	switch {
	case cmd.ProcessState != nil && cmd.ProcessState.Success():
		return text, nil // even if a background child held the output open
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return text, errors.New("timed out after " + timeout.String())
	case errors.Is(ctx.Err(), context.Canceled):
		return text, errors.New("killed: the role changed")
	case errors.As(err, &exit):
		return text, exit // "exit status N" or "signal: killed"
	}
	return text, err
}

// capped keeps the first maxOutput bytes written and drops the rest, so a
// chatty command cannot grow the log or our memory.
type capped struct{ b bytes.Buffer }

func (c *capped) Write(p []byte) (int, error) {
	if room := maxOutput - c.b.Len(); room > 0 {
		c.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// hookRunner runs on_active and on_standby for the switcher, on its own
// goroutine, so that a slow command never holds up a role change. Only the
// newest role counts: one that arrives while the other role's commands
// run kills them and runs its own.
type hookRunner struct {
	n       *Node
	roles   chan Role // capacity 1, newest wins
	closing chan struct{}
	done    chan struct{}
}

func newHookRunner(n *Node) *hookRunner {
	return &hookRunner{n: n, roles: make(chan Role, 1), closing: make(chan struct{}), done: make(chan struct{})}
}

// want asks for r's commands; it never blocks.
func (h *hookRunner) want(r Role) {
	select {
	case <-h.roles:
	default:
	}
	h.roles <- r
}

// close lets the commands already asked for finish (each within its
// timeout), then stops the runner.
func (h *hookRunner) close() {
	close(h.closing)
	<-h.done
}

func (h *hookRunner) run() {
	defer close(h.done)
	var last Role
	ran := false
	for {
		var r Role
		select {
		case r = <-h.roles:
		case <-h.closing:
			select {
			case r = <-h.roles:
			default:
				return
			}
		}
		for next := &r; next != nil; {
			r = *next
			if ran && r == last {
				break
			}
			last, ran = r, true
			next = h.runFor(r)
		}
	}
}

// runFor runs r's commands; a different role asked for meanwhile cancels
// them and is returned.
func (h *hookRunner) runFor(r Role) *Role {
	n := h.n
	cmds, event := n.cfg.OnStandby, "on_standby"
	if r == Active {
		cmds, event = n.cfg.OnActive, "on_active"
	}
	if len(cmds) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fin := make(chan struct{})
	go func() {
		defer close(fin)
		runCommands(ctx, n.log, event, cmds, n.opts.CommandTimeout, n.env(r))
	}()
	for {
		select {
		case <-fin:
			return nil
		case nr := <-h.roles:
			if nr == r {
				continue
			}
			n.log.Warn("peer commands cancelled: the role changed", "event", event, "role", nr.String())
			cancel()
			<-fin
			return &nr
		}
	}
}
