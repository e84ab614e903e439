package imap

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"

	"mailproxy/internal/transcript"
)

func readAll(input string, max int) (cmds []*command, conts int, err error) {
	var w strings.Builder
	rd := &reader{r: bufio.NewReader(strings.NewReader(input)), w: &w, max: max}
	for {
		cmd, err := rd.readCommand()
		var syn errSyntax
		if errors.As(err, &syn) {
			cmds = append(cmds, &command{tag: cmd.tag, name: "BAD"})
			continue
		}
		if err != nil {
			return cmds, strings.Count(w.String(), "+ "), err
		}
		cmds = append(cmds, cmd)
	}
}

func TestReadCommand(t *testing.T) {
	cases := []struct {
		in    string
		tag   string
		name  string
		args  []string
		conts int
	}{
		{"a1 LOGIN alice secret\r\n", "a1", "LOGIN", []string{"alice", "secret"}, 0},
		{"a1 login \"al ice\" \"p\\\"w\\\\\"\r\n", "a1", "LOGIN", []string{"al ice", `p"w\`}, 0},
		{"a1 LOGIN {5}\r\nalice {2}\r\npw\r\n", "a1", "LOGIN", []string{"alice", "pw"}, 2},
		{"a1 LOGIN {5+}\r\nalice {2+}\r\npw\r\n", "a1", "LOGIN", []string{"alice", "pw"}, 0},
		{"a1 LOGIN {0}\r\n {0+}\r\n\r\n", "a1", "LOGIN", []string{"", ""}, 1},
		{"x ID (\"name\" \"mbsync\" \"version\" NIL)\r\n", "x", "ID", []string{"name", "mbsync", "version", "NIL"}, 0},
		{"A002 AUTHENTICATE PLAIN AHVzZXI4ODMAcHc=\r\n", "A002", "AUTHENTICATE", []string{"PLAIN", "AHVzZXI4ODMAcHc="}, 0},
		{"a NOOP\n", "a", "NOOP", nil, 0},
	}
	for _, tc := range cases {
		cmds, conts, err := readAll(tc.in, 8192)
		if err != io.EOF || len(cmds) != 1 {
			t.Errorf("%q: %d commands, err %v", tc.in, len(cmds), err)
			continue
		}
		c := cmds[0]
		if c.tag != tc.tag || c.name != tc.name || strings.Join(c.args, "|") != strings.Join(tc.args, "|") || conts != tc.conts {
			t.Errorf("%q: got tag %q name %q args %q conts %d", tc.in, c.tag, c.name, c.args, conts)
		}
	}
}

func TestReadCommandErrors(t *testing.T) {
	cases := []struct {
		in    string
		fatal bool
	}{
		{"+tag NOOP\r\n", false},
		{"a\r\n", false},
		{"a LOGIN \"unterminated\r\n", false},
		{"a LOGIN \"bad\\escape\"\r\n", false},
		{"a LOGIN \"nul\x00\" pw\r\n", false},
		{"a LOGIN \"cr\r\" pw\r\n", false},
		{"a LOGIN {abc}\r\n", false},
		{"a LOGIN {5} trailing\r\n", false},
		{"a LOGIN {9000}\r\n", false},
		{"a LOGIN {9000+}\r\n", true},
		{"a LOGIN {4294967296+}\r\n", true},
		{"a LOGIN {-1+}\r\n", true},
		{"a LOGIN {abc+}\r\n", true},
		{"a LOGIN {+}\r\n", true},
		{"a LOGIN {4294967296}\r\n", false},
		{"a LOGIN " + strings.Repeat("x", 9000) + "\r\n", true},
		{"a LOGIN {3}\r\nabc " + strings.Repeat("x", 9000) + "\r\n", true},
	}
	for _, tc := range cases {
		cmds, _, err := readAll(tc.in, 8192)
		var fatal errFatal
		if tc.fatal {
			if !errors.As(err, &fatal) {
				t.Errorf("%q: err %v, want fatal", tc.in, err)
			}
			continue
		}
		if err != io.EOF || len(cmds) != 1 || cmds[0].name != "BAD" {
			t.Errorf("%q: commands %v err %v, want one BAD", tc.in, cmds, err)
		}
	}
}

// TestTranscripts parses what real clients sent before TLS or login.
func TestTranscripts(t *testing.T) {
	conns, err := transcript.Load("*-imap.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		// Stop at STARTTLS or the first login: after that the bytes are TLS or relayed.
		var pre strings.Builder
		for _, ch := range c.Chunks {
			if !ch.Client {
				continue
			}
			pre.WriteString(ch.Data)
			up := strings.ToUpper(ch.Data)
			if strings.Contains(up, "STARTTLS") || strings.Contains(up, " LOGIN ") || strings.Contains(up, " AUTHENTICATE ") {
				break
			}
		}
		cmds, _, _ := readAll(pre.String(), 8192)
		for _, cmd := range cmds {
			if cmd.name == "BAD" {
				t.Errorf("%s %s: a command was refused in %q", c.File, c.Section, pre.String())
			}
		}
	}
}

// addTranscripts seeds f with all that each recorded client sent.
func addTranscripts(f *testing.F) {
	conns, err := transcript.Load("*-imap.txt")
	if err != nil {
		f.Fatal(err)
	}
	for _, c := range conns {
		f.Add(c.ClientBytes())
	}
}

func FuzzReadCommand(f *testing.F) {
	addTranscripts(f)
	f.Add("a LOGIN {5}\r\nalice {2+}\r\npw\r\n")
	f.Add("a ID (\"x\" {3}\r\nabc)\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		const max = 512
		cmds, _, _ := readAll(in, max)
		for _, c := range cmds {
			total := 0
			for _, a := range c.args {
				total += len(a)
			}
			if total > 2*max+len(in) {
				t.Fatalf("arguments of %d bytes from %d bytes of input", total, len(in))
			}
			if c.tag != "" && !validTag(c.tag) {
				t.Fatalf("invalid tag %q accepted", c.tag)
			}
		}
	})
}
