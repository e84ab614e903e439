// Package transcript reads the wire transcripts of real mail clients in
// shared/testdata/transcripts (see its README) for tests and fuzz seeds.
package transcript

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Chunk is one read or write seen on the wire.
type Chunk struct {
	Client bool   // sent by the client (C:), else by the server (S:)
	Data   string // the bytes, unescaped
}

// Conn is one recorded connection.
type Conn struct {
	File, Section string
	Chunks        []Chunk
}

// Dir finds the transcripts folder from a package directory inside the
// repository (it sits beside the checkout, in ../shared). It returns ""
// when the folder is not there.
func Dir() string {
	wd, _ := os.Getwd()
	for d := wd; d != filepath.Dir(d); d = filepath.Dir(d) {
		p := filepath.Join(filepath.Dir(d), "shared", "testdata", "transcripts")
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return p
		}
	}
	return ""
}

// Load reads every transcript whose name matches pattern (e.g. "*-imap.txt")
// and returns its connections. A missing folder yields none.
func Load(pattern string) ([]Conn, error) {
	dir := Dir()
	if dir == "" {
		return nil, nil
	}
	files, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil {
		return nil, err
	}
	var out []Conn
	for _, f := range files {
		conns, err := parse(f)
		if err != nil {
			return nil, err
		}
		out = append(out, conns...)
	}
	return out, nil
}

func parse(path string) ([]Conn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Conn
	var cur *Conn
	section := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# ==== section: "):
			section = strings.TrimSuffix(strings.TrimPrefix(line, "# ==== section: "), " ====")
		case strings.HasPrefix(line, "# ---- connection"):
			out = append(out, Conn{File: filepath.Base(path), Section: section})
			cur = &out[len(out)-1]
		case cur != nil:
			fields := strings.SplitN(strings.TrimLeft(line, " "), " ", 3)
			if len(fields) < 3 || (fields[1] != "C:" && fields[1] != "S:") || strings.HasPrefix(fields[2], "(") {
				continue
			}
			cur.Chunks = append(cur.Chunks, Chunk{Client: fields[1] == "C:", Data: unescape(fields[2])})
		}
	}
	return out, sc.Err()
}

// unescape turns the transcript's \r, \n, \t, \\ and \xNN back into bytes.
func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch s[i] {
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'x':
			if i+2 < len(s) {
				if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
					b.WriteByte(byte(v))
					i += 2
					continue
				}
			}
			b.WriteString(`\x`)
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// ClientBytes is everything the client sent on c, in order.
func (c Conn) ClientBytes() string {
	var b strings.Builder
	for _, ch := range c.Chunks {
		if ch.Client {
			b.WriteString(ch.Data)
		}
	}
	return b.String()
}
