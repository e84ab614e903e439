package managesieve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"mailproxy/internal/testkit"
	"mailproxy/protocols"
)

// Fuzz flags: which kind of listener and backend the input meets.
const (
	fuzzRequireTLS = 1 << iota
	fuzzHasTLS
	fuzzTLSActive
	fuzzDialFails
	fuzzLoginOnly // the backend offers SASL LOGIN only
)

// fuzzSeeds are client conversations: what real clients send (sieve-connect,
// Roundcube's Net_Sieve), and the corners.
var fuzzSeeds = []string{
	"CAPABILITY\r\nAUTHENTICATE \"PLAIN\" \"" + b64("\x00alice\x00pw") + "\"\r\nLISTSCRIPTS\r\nLOGOUT\r\n",
	"AUTHENTICATE \"PLAIN\" {12+}\r\n" + b64("\x00alice\x00pw") + "\r\nPUTSCRIPT \"a\" {4+}\r\nkeep\r\n",
	"AUTHENTICATE \"LOGIN\"\r\n\"" + b64("alice") + "\"\r\n\"" + b64("pw") + "\"\r\nGETSCRIPT \"a\"\r\n",
	"AUTHENTICATE \"PLAIN\"\r\n\"" + b64("\x00alice\x00pw") + "\"\r\n",
	"AUTHENTICATE \"LOGIN\"\r\n\"*\"\r\nNOOP \"t\"\r\nSTARTTLS\r\nAUTHENTICATE \"PLAIN\" \"x\"\r\n",
	"STARTTLS\r\nAUTHENTICATE \"PLAIN\" \"" + b64("\x00alice\x00pw") + "\"\r\n",
	"AUTHENTICATE \"PLAIN\" \"" + b64("\x00alice\x00wrong") + "\"\r\nAUTHENTICATE \"PLAIN\" \"" + b64("\x00alice\x00pw") + "\"\r\n",
	"NOOP {3}\r\nabc\r\nNOOP \"a\\\"b\\\\\"\r\n\"quoted\"\r\n{2+}\r\nxy\r\n(\r\n)\"\r\n",
	"AUTHENTICATE \"PLAIN\" {99999999+}\r\n",
	"AUTHENTICATE \"PLAIN\" \"" + b64("authz\x00alice\x00pw\r\nLOGOUT") + "\"\r\n",
}

// FuzzFront runs the whole pre-login dialogue on arbitrary client bytes,
// against an in-memory backend, and checks what must always hold: no
// panic, every reply ends in CRLF, the backend sees only its greeting's
// follow-ups and well-formed AUTHENTICATE exchanges, no credentials reach
// it before TLS when TLS is required, and a relay comes only after the
// backend accepted a login.
func FuzzFront(f *testing.F) {
	for _, s := range fuzzSeeds {
		for _, flags := range []uint8{0, fuzzHasTLS | fuzzRequireTLS, fuzzLoginOnly, fuzzTLSActive | fuzzRequireTLS} {
			f.Add([]byte(s), flags)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, flags uint8) {
		client := &testkit.MemConn{In: bytes.NewReader(data), Port: 4190}
		back := &fuzzBackend{loginOnly: flags&fuzzLoginOnly != 0}
		s := &protocols.Session{
			ID: "fuzz", Conn: client, MaxLine: 1024, Log: slog.New(slog.DiscardHandler),
			RequireTLS: flags&fuzzRequireTLS != 0, TLSActive: flags&fuzzTLSActive != 0,
			Dial: func(ctx context.Context, login string, hello func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
				if flags&fuzzDialFails != 0 {
					return nil, errors.New("no backend")
				}
				back.dials++
				back.reset()
				b := protocols.NewBackend(back, "fuzz", "mem", nil)
				if err := hello(ctx, b); err != nil {
					return nil, err
				}
				return b, nil
			},
		}
		if flags&fuzzHasTLS != 0 {
			s.TLS = serverTLS()
		}
		relay, _ := (&Handler{}).Serve(context.Background(), s)

		if out := client.Out.String(); out != "" && !strings.HasSuffix(out, "\r\n") {
			t.Fatalf("reply does not end a line: %q", out)
		}
		for _, l := range back.Lines {
			if !back.valid(l) {
				t.Fatalf("backend got %q", l)
			}
			if s.RequireTLS && !s.TLSActive {
				t.Fatalf("credentials reached the backend before TLS: %q", l)
			}
		}
		if relay != nil && !back.loggedIn {
			t.Fatal("relay without a backend login")
		}
		if back.dials > 1+bytes.Count(data, []byte("\n")) {
			t.Fatalf("%d backend dials for %d lines", back.dials, bytes.Count(data, []byte("\n")))
		}
	})
}

// FuzzReadTokens checks the command reader alone: it never reads more than
// its bounds allow, and what it accepts re-quotes to something it reads back
// the same.
func FuzzReadTokens(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := &reader{r: newBufReader(data), max: 256}
		for range 20 {
			toks, err := rd.readTokens()
			if err != nil {
				var syn errSyntax
				if errors.As(err, &syn) {
					continue
				}
				return
			}
			var parts []string
			for _, tk := range toks {
				if tk.str {
					parts = append(parts, quote(tk.s, true))
					continue
				}
				if tk.s == "" || strings.ContainsAny(tk.s, " ()\"{\r\n") {
					t.Fatalf("atom %q", tk.s)
				}
				parts = append(parts, tk.s)
			}
			again, err := (&reader{r: newBufReader([]byte(strings.Join(parts, " ") + "\r\n")), max: 1 << 20}).readTokens()
			if err != nil || len(again) != len(toks) {
				t.Fatalf("%+v re-read as %+v, %v", toks, again, err)
			}
			for i := range toks {
				if again[i] != toks[i] {
					t.Fatalf("token %d: %+v re-read as %+v", i, toks[i], again[i])
				}
			}
		}
	})
}

// fuzzBackend is an in-memory ManageSieve backend connection: every line
// written to it is answered at once. alice/pw logs in.
type fuzzBackend struct {
	testkit.Scripted
	loginOnly bool
	loggedIn  bool
	step      int // of SASL LOGIN
	user      string
	dials     int
}

func (b *fuzzBackend) reset() {
	b.step, b.user = 0, ""
	b.Answer = b.answer
	mechs := "PLAIN LOGIN"
	if b.loginOnly {
		mechs = "LOGIN"
	}
	b.Reset("\"IMPLEMENTATION\" \"fuzz\"\r\n\"SASL\" \"" + mechs + "\"\r\n\"SIEVE\" \"fileinto\"\r\n\"VERSION\" \"1.0\"\r\nOK\r\n")
}

// valid says whether line is one mailproxy may send a backend before login.
func (b *fuzzBackend) valid(line string) bool {
	if strings.ContainsAny(line, "\x00\r") {
		return false
	}
	return strings.HasPrefix(line, `AUTHENTICATE "PLAIN" "`) || line == `AUTHENTICATE "LOGIN"` ||
		line == `"*"` || strings.HasPrefix(line, `"`) && strings.Count(line, `"`) == 2
}

func (b *fuzzBackend) answer(line string) string {
	switch {
	case strings.HasPrefix(line, `AUTHENTICATE "PLAIN" `):
		if !b.loginOnly && line == `AUTHENTICATE "PLAIN" "`+b64("\x00alice\x00pw")+`"` {
			b.loggedIn = true
			return `OK "Logged in."`
		}
		return `NO "Authentication failed."`
	case line == `AUTHENTICATE "LOGIN"`:
		b.step = 1
		return `"` + b64("Username:") + `"`
	case b.step == 1:
		b.step, b.user = 2, line
		return `"` + b64("Password:") + `"`
	case b.step == 2:
		b.step = 0
		if b.user == `"`+b64("alice")+`"` && line == `"`+b64("pw")+`"` {
			b.loggedIn = true
			return `OK "Logged in."`
		}
		return `NO "Authentication failed."`
	}
	return `NO "Unknown command."`
}

func newBufReader(b []byte) *bufio.Reader { return bufio.NewReaderSize(bytes.NewReader(b), 4096) }
