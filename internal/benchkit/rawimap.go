// Package benchkit holds what mailproxy's benchmarks share: the Go
// benchmarks in integration and the comparison client in bench/compare.
package benchkit

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// RawIMAP is a client that speaks just enough IMAP for benchmarks: it finds
// tagged replies and the size of a literal and parses nothing else, so it
// costs little and the same whatever is in front of the backend.
type RawIMAP struct {
	Conn    net.Conn
	Timeout time.Duration // for every command

	r   *bufio.Reader
	buf []byte // for literals; large so that reads bypass r's buffer
}

// DialRaw connects to addr, reads the greeting and logs in, each step
// under timeout.
func DialRaw(addr, user, password string, timeout time.Duration) (*RawIMAP, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	return login(conn, user, password, timeout)
}

// login reads the greeting on conn and logs in.
func login(conn net.Conn, user, password string, timeout time.Duration) (*RawIMAP, error) {
	c := &RawIMAP{Conn: conn, Timeout: timeout, r: bufio.NewReaderSize(conn, 4096)}
	conn.SetDeadline(time.Now().Add(timeout))
	if line, err := c.r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* OK") {
		conn.Close()
		return nil, fmt.Errorf("greeting %q: %v", line, err)
	}
	if err := c.Command("a", "LOGIN "+user+" "+password); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// DialRawTLS is DialRaw over implicit TLS with cfg.
func DialRawTLS(addr, user, password string, cfg *tls.Config, timeout time.Duration) (*RawIMAP, error) {
	d := &net.Dialer{Timeout: timeout}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	return login(conn, user, password, timeout)
}

// Close closes the connection.
func (c *RawIMAP) Close() error { return c.Conn.Close() }

// Command sends one command and reads up to its tagged reply, which must
// be OK.
func (c *RawIMAP) Command(tag, cmd string) error {
	c.Conn.SetDeadline(time.Now().Add(c.Timeout))
	if _, err := io.WriteString(c.Conn, tag+" "+cmd+"\r\n"); err != nil {
		return err
	}
	return c.Tagged(tag)
}

// Tagged reads lines up to the one tagged tag and checks it is OK.
func (c *RawIMAP) Tagged(tag string) error {
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading reply to %s: %w", tag, err)
		}
		if rest, ok := strings.CutPrefix(line, tag+" "); ok {
			if !strings.HasPrefix(rest, "OK") {
				return fmt.Errorf("%s %s", tag, strings.TrimSpace(rest))
			}
			return nil
		}
	}
}

// Fetch fetches message 1, checks its literal is size bytes, and throws
// the body away.
func (c *RawIMAP) Fetch(size int) error {
	c.Conn.SetDeadline(time.Now().Add(c.Timeout))
	if _, err := io.WriteString(c.Conn, "f FETCH 1 BODY[]\r\n"); err != nil {
		return err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	open := strings.LastIndexByte(line, '{')
	if open < 0 {
		return fmt.Errorf("unexpected FETCH line %q", line)
	}
	n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimRight(line, "\r\n"), "}")[open+1:])
	if err != nil || n != size {
		return fmt.Errorf("unexpected FETCH line %q", line)
	}
	if c.buf == nil {
		c.buf = make([]byte, 256<<10)
	}
	for n > 0 {
		k, err := c.r.Read(c.buf[:min(n, len(c.buf))])
		if err != nil {
			return err
		}
		n -= k
	}
	return c.Tagged("f")
}
