package transcript

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// escape is the transcripts' escaping as capture/format.py writes it: the
// inverse of Unescape for one piece.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == ' ' && i == len(s)-1:
			b.WriteString(`\x20`)
		case c >= ' ' && c <= '~':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	return b.String()
}

func TestUnescape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`a001 LOGIN "user880" "pw"\r\n`, "a001 LOGIN \"user880\" \"pw\"\r\n"},
		{`+ \r\n`, "+ \r\n"},
		{`AUTH PLAIN\x20`, "AUTH PLAIN "},
		{`\\\\x41\x41\xff\t`, `\\x41A` + "\xff\t"},
		{``, ``},
	} {
		got, err := Unescape(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Unescape(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{`\`, `ab\`, `\x4`, `\x`, `\xg0`, `\x+f`, `\q`, "raw\ttab", "raw\xff"} {
		if got, err := Unescape(in); err == nil {
			t.Errorf("Unescape(%q) = %q, want an error", in, got)
		}
	}
}

// Every byte, and the spaces only escaped at the end of a piece, survive
// escape and Unescape.
func TestUnescapeRoundTrip(t *testing.T) {
	var all strings.Builder
	for c := range 256 {
		all.WriteByte(byte(c))
	}
	for _, s := range []string{all.String(), "a b ", " ", `\x41`, "AHVzZXI4ODQAcHc=", "\r\n\\\r\n"} {
		got, err := Unescape(escape(s))
		if err != nil || got != s {
			t.Errorf("round trip of %q via %q: %q, %v", s, escape(s), got, err)
		}
	}
}

// Every transcript parses, and what the tests rely on is in it.
func TestLoad(t *testing.T) {
	conns, err := Load("*.txt")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]bool{}
	tls := 0
	for _, c := range conns {
		files[c.File] = true
		if c.Section == "" || c.Label == "" || len(c.Chunks) == 0 {
			t.Errorf("%s: no section, label or chunks", c)
		}
		if c.Chunks[0].Client {
			t.Errorf("%s: the client spoke before the greeting", c)
		}
		if c.TLS {
			tls++
		}
		turns := c.Turns()
		for i := 1; i < len(turns); i++ {
			if turns[i].Client == turns[i-1].Client {
				t.Errorf("%s: turns %d and %d are both from one side", c, i-1, i)
			}
		}
		var client, server strings.Builder
		for _, tn := range turns {
			if tn.Client {
				client.WriteString(tn.Data)
			} else {
				server.WriteString(tn.Data)
			}
		}
		if client.String() != c.ClientBytes() || server.String() != c.ServerBytes() {
			t.Errorf("%s: the turns do not add up to the bytes of each side", c)
		}
	}
	// README.md lists 19 files with 57 sections of one connection each,
	// 17 of them STARTTLS/STLS flows (getmail6 has none).
	if len(files) != 19 || len(conns) != 57 || tls != 17 {
		t.Errorf("%d files, %d connections, %d with TLS", len(files), len(conns), tls)
	}
	if _, err := Load("*-nntp.txt"); err == nil {
		t.Error("a pattern that matches nothing loaded")
	}
}

func TestParse(t *testing.T) {
	const good = `# ==== section: curl, stls ====
# client exit status: 0

# ---- connection 1 of 1 ----
  0.000264 E  client connected, wall clock 2026-11-25T15:57:21Z
  0.001612 S: +OK ready\r\n
  0.001870 C: STLS\r\n
  0.002080 S: +OK Begin TLS negotiation now.\r\n
  0.002080 S+ \x20
  0.006601 C: (TLS handshake starts: ClientHello, 517 bytes; from here on everything is TLS)
#          TLS: 1000 bytes in 10 reads from the client
  0.018712 E  server closed its side (EOF)
`
	conns, err := parse("x-pop3.txt", strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	want := Conn{File: "x-pop3.txt", Section: "curl, stls", Label: "connection 1 of 1", TLS: true,
		Chunks: []Chunk{{false, "+OK ready\r\n"}, {true, "STLS\r\n"}, {false, "+OK Begin TLS negotiation now.\r\n"}, {false, " "}}}
	if len(conns) != 1 || !reflect.DeepEqual(conns[0], want) {
		t.Fatalf("got %#v\nwant %#v", conns, want)
	}
	if got := conns[0].String(); got != "x-pop3.txt: curl, stls, connection 1 of 1" {
		t.Errorf("String() = %q", got)
	}
	if got := conns[0].Turns(); len(got) != 3 || got[2].Data != "+OK Begin TLS negotiation now.\r\n " {
		t.Errorf("Turns() = %+v", got)
	}

	for _, bad := range []string{
		"  0.1 S: +OK\\r\\n\n",                                                                 // before any connection
		"# ---- connection 1 of 1 ----\n  0.1 X: hello\n",                                      // unknown marker
		"# ---- connection 1 of 1 ----\n  0.1 C: a\\qb\n",                                      // bad escape
		"# ---- connection 1 of 1 ----\nQUIT\\r\\n\n",                                          // not a record
		"# ---- connection 1 of 1 ----\n  0.1 C: (TLS handshake starts\n  0.2 C: QUIT\\r\\n\n", // plaintext after TLS
	} {
		if conns, err := parse("bad.txt", strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed: %#v", bad, conns)
		}
	}
}
