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
