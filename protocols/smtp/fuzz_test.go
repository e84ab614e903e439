package smtp

import (
	"bufio"
	"bytes"
	"net"
	"strconv"
	"strings"
	"testing"

	"mailproxy/internal/transcript"
)

// serverTurns returns, from the recorded transcripts, every run of server
// reads (one reply or several): what real Postfix sent.
func serverTurns(tb testing.TB) [][]byte {
	conns, err := transcript.Load("*-smtp.txt")
	if err != nil {
		tb.Fatal(err)
	}
	var turns [][]byte
	for _, c := range conns {
		for _, tn := range c.Turns() {
			if !tn.Client {
				turns = append(turns, []byte(tn.Data))
			}
		}
	}
	return turns
}

// TestTranscriptReplies: every reply Postfix gave the real clients parses.
func TestTranscriptReplies(t *testing.T) {
	n := 0
	for _, turn := range serverTurns(t) {
		r := bufio.NewReader(bytes.NewReader(turn))
		for {
			if _, err := r.Peek(1); err != nil {
				break
			}
			rep, err := readReply(r)
			if err != nil {
				t.Fatalf("%q: %v", turn, err)
			}
			if rep.code == 250 && len(rep.lines) > 1 {
				if ext := rep.extensions(); ext["XCLIENT"] == "" || ext["SIZE"] != "104857600" {
					t.Errorf("EHLO extensions %q", ext)
				}
			}
			n++
		}
	}
	if n < 50 {
		t.Errorf("only %d replies", n)
	}
}

// FuzzReadReply: the backend's replies are the one thing parsed by hand
// here (go-smtp parses the client's commands). Whatever a backend sends,
// readReply does not panic, and what it accepts survives a round trip
// through wire, which is what go-smtp's client is handed.
func FuzzReadReply(f *testing.F) {
	for _, turn := range serverTurns(f) {
		f.Add(turn)
	}
	f.Add([]byte("220-a\r\n220 b\r\n"))
	f.Add([]byte("220\r\n"))
	f.Add([]byte("250-a\n250 b"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := readReply(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		if rep.code < 200 || rep.code > 599 || len(rep.lines) == 0 || len(rep.lines) > maxReplyLines {
			t.Fatalf("accepted %v from %q", rep, data)
		}
		again, err := readReply(bufio.NewReader(strings.NewReader(rep.wire())))
		if err != nil || again.code != rep.code || strings.Join(again.lines, "\n") != strings.Join(rep.lines, "\n") {
			t.Fatalf("round trip of %q: %v %v", rep.wire(), again, err)
		}
		_ = rep.extensions()
		_ = rep.String()
	})
}

// FuzzXCLIENT: whatever HELO name a client gives (go-smtp takes anything
// up to a space) and whatever a backend announces, the XCLIENT commands
// are single lines within the command limit whose values decode back.
func FuzzXCLIENT(f *testing.F) {
	f.Add("client.example", "NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT")
	f.Add("[127.0.0.1]", "ADDR HELO")
	f.Add("msg.eml", "helo")
	f.Add("h\xc3\xa9+=\x00\r\n", "HELO")
	f.Add(strings.Repeat("x", 700), "HELO ADDR")
	f.Fuzz(func(t *testing.T, helo, announced string) {
		client := &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 2525}
		cmds := xclientCommands(strings.Fields(announced), clientAttrs(client, nil, helo))
		seen := map[string]string{}
		for _, c := range cmds {
			if len(c) > maxCommand || !strings.HasPrefix(c, "XCLIENT ") {
				t.Fatalf("command %q", c)
			}
			for _, kv := range strings.Split(c, " ")[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" || v == "" {
					t.Fatalf("attribute %q in %q", kv, c)
				}
				for i := 0; i < len(v); i++ {
					if v[i] < '!' || v[i] > '~' {
						t.Fatalf("raw byte %q in %q", v[i], c)
					}
				}
				seen[k] = v
			}
		}
		if v, ok := seen["HELO"]; ok && v != "[UNAVAILABLE]" {
			if got := unxtext(t, v); got != helo {
				t.Fatalf("HELO %q decodes to %q", helo, got)
			}
		}
	})
}

func unxtext(t *testing.T, s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			t.Fatalf("truncated xtext %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			t.Fatalf("xtext %q: %v", s, err)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String()
}
