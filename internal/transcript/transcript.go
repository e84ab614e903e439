// Package transcript reads the wire transcripts of real mail clients kept
// in the repository's testdata/transcripts (format and provenance: the
// README there). Tests replay them through mailproxy, and fuzz targets take
// them as seeds. It is the one reader of that format in the repository.
package transcript

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Chunk is a piece of what one side sent: one record of a transcript, or
// in Turns a run of them.
type Chunk struct {
	Client bool   // sent by the client (C), else by the server (S)
	Data   string // the bytes, unescaped
}

// Conn is one recorded connection, up to the client's TLS handshake if it
// started one.
type Conn struct {
	File    string  // the transcript's base name, e.g. "curl-pop3.txt"
	Section string  // the client configuration, e.g. "curl, stls"
	Label   string  // the connection within its section: "connection 1 of 1"
	Chunks  []Chunk // every plaintext record in order
	TLS     bool    // the client started a TLS handshake after the last chunk
}

// String names the connection for test names and messages:
// "curl-pop3.txt: curl, stls, connection 1 of 1".
func (c Conn) String() string {
	return c.File + ": " + c.Section + ", " + c.Label
}

// ClientBytes is everything the client sent on c before any TLS, in order.
func (c Conn) ClientBytes() string { return c.bytes(true) }

// ServerBytes is everything the server sent on c before any TLS, in order.
func (c Conn) ServerBytes() string { return c.bytes(false) }

func (c Conn) bytes(client bool) string {
	var b strings.Builder
	for _, ch := range c.Chunks {
		if ch.Client == client {
			b.WriteString(ch.Data)
		}
	}
	return b.String()
}

// Turns joins consecutive chunks from the same side, so that the result
// alternates between client and server: a command (or a pipelined
// batch), then its reply.
func (c Conn) Turns() []Chunk {
	var turns []Chunk
	for _, ch := range c.Chunks {
		if n := len(turns); n > 0 && turns[n-1].Client == ch.Client {
			turns[n-1].Data += ch.Data
			continue
		}
		turns = append(turns, ch)
	}
	return turns
}

// Dir is the repository's testdata/transcripts: it walks up from the
// working directory (a package directory under go test) to the directory
// that holds go.mod.
func Dir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "testdata", "transcripts"), nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod in %s or above", wd)
		}
	}
}

// Load reads every transcript in Dir whose name matches pattern (e.g.
// "*-pop3.txt"), in name order, and returns their connections. A pattern
// that matches no file is an error: a test must not pass on no data.
func Load(pattern string) ([]Conn, error) {
	dir, err := Dir()
	if err != nil {
		return nil, err
	}
	files, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no transcript in %s matches %q", dir, pattern)
	}
	var out []Conn
	for _, file := range files {
		conns, err := parseFile(file)
		if err != nil {
			return nil, err
		}
		out = append(out, conns...)
	}
	return out, nil
}

func parseFile(path string) ([]Conn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parse(filepath.Base(path), f)
}

var (
	sectionRE = regexp.MustCompile(`^# ==== section: (.*) ====$`)
	connRE    = regexp.MustCompile(`^# ---- (connection \d+ of \d+) ----$`)
	// A record: seconds since accept, a marker (C: C+ S: S+, or "E " for
	// an event) and the payload.
	recordRE = regexp.MustCompile(`^ *\d+\.\d+ ([CS][:+]|E ) (.*)$`)
)

// tlsStarts begins the client record that stands for the ClientHello.
const tlsStarts = "(TLS handshake starts"

// parse reads one transcript; file names it in the connections and errors.
// Anything that is not a comment, a blank line or a well-formed record is
// an error, so that a damaged file cannot quietly lose data.
func parse(file string, r io.Reader) ([]Conn, error) {
	var out []Conn
	section := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if err := parseLine(file, &section, &out, line); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", file, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return out, nil
}

func parseLine(file string, section *string, conns *[]Conn, line string) error {
	if m := sectionRE.FindStringSubmatch(line); m != nil {
		*section = m[1]
		return nil
	}
	if m := connRE.FindStringSubmatch(line); m != nil {
		*conns = append(*conns, Conn{File: file, Section: *section, Label: m[1]})
		return nil
	}
	if line == "" || line[0] == '#' {
		return nil
	}
	m := recordRE.FindStringSubmatch(line)
	switch {
	case m == nil:
		return fmt.Errorf("not a record: %q", line)
	case len(*conns) == 0:
		return errors.New("record before the first connection")
	}
	cur := &(*conns)[len(*conns)-1]
	marker, payload := m[1], m[2]
	switch {
	case marker[0] == 'E':
		return nil
	case cur.TLS:
		return fmt.Errorf("plaintext record after the TLS handshake: %q", line)
	case marker == "C:" && strings.HasPrefix(payload, tlsStarts):
		cur.TLS = true
		return nil
	}
	data, err := Unescape(payload)
	if err != nil {
		return err
	}
	cur.Chunks = append(cur.Chunks, Chunk{Client: marker[0] == 'C', Data: data})
	return nil
}

// Unescape turns a record's payload back into the bytes on the wire:
// `\\`, `\r`, `\n`, `\t` and `\xHH` are escapes, printable ASCII stands
// for itself, and anything else is an error.
func Unescape(s string) (string, error) {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' {
			return "", fmt.Errorf("raw byte %#02x in %q", c, s)
		}
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i++; i == len(s) {
			return "", fmt.Errorf("trailing backslash in %q", s)
		}
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'x':
			if i+2 >= len(s) {
				return "", fmt.Errorf("short \\x escape in %q", s)
			}
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				return "", fmt.Errorf("bad \\x escape in %q", s)
			}
			b.WriteByte(byte(v))
			i += 2
		default:
			return "", fmt.Errorf("unknown escape \\%c in %q", s[i], s)
		}
	}
	return b.String(), nil
}
