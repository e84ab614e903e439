package testkit

import (
	"bytes"
	"io"
	"net"
	"strings"
	"time"
)

// MemConn is a connection in memory for fuzz targets: it reads In and
// collects what is written in Out. Port is its local port, as a listener's.
type MemConn struct {
	In   io.Reader
	Out  bytes.Buffer
	Port int
}

func (c *MemConn) Read(p []byte) (int, error)  { return c.In.Read(p) }
func (c *MemConn) Write(p []byte) (int, error) { return c.Out.Write(p) }
func (c *MemConn) Close() error                { return nil }
func (c *MemConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: c.Port}
}
func (c *MemConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *MemConn) SetDeadline(time.Time) error      { return nil }
func (c *MemConn) SetReadDeadline(time.Time) error  { return nil }
func (c *MemConn) SetWriteDeadline(time.Time) error { return nil }

// Scripted is a backend connection in memory for fuzz targets: every line
// written to it is kept in Lines and answered at once by Answer (CRLF
// added); reads return the answers, then io.EOF.
type Scripted struct {
	MemConn
	Answer  func(line string) string
	Lines   []string
	partial []byte
	pending bytes.Buffer
}

// Reset starts a new connection, which greets with greeting.
func (s *Scripted) Reset(greeting string) {
	s.pending.Reset()
	s.partial = nil
	s.pending.WriteString(greeting)
}

func (s *Scripted) Read(p []byte) (int, error) {
	if s.pending.Len() == 0 {
		return 0, io.EOF
	}
	return s.pending.Read(p)
}

func (s *Scripted) Write(p []byte) (int, error) {
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := strings.TrimSuffix(string(s.partial[:i]), "\r")
		s.partial = s.partial[i+1:]
		s.Lines = append(s.Lines, line)
		s.pending.WriteString(s.Answer(line) + "\r\n")
	}
}
