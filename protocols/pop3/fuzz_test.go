package pop3

import (
	"bytes"
	"context"
	"encoding/base64"
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
	fuzzAPOP
	fuzzBackendSASL
	fuzzHasTLS
	fuzzTLSActive
	fuzzDialFails
	fuzzForward
)

// FuzzFront runs the whole pre-login dialogue on arbitrary client bytes,
// against an in-memory backend, and checks what must always hold: no
// panic, every reply a CRLF line, nothing but well-formed commands reach
// the backend, no credentials reach it before TLS when TLS is required, and
// a relay only after the backend accepted a login.
func FuzzFront(f *testing.F) {
	for _, tr := range loadTranscripts(f) {
		for _, flags := range []uint8{0, fuzzBackendSASL, fuzzHasTLS | fuzzRequireTLS, fuzzAPOP | fuzzForward} {
			f.Add([]byte(tr.ClientBytes()), flags)
		}
	}
	for _, s := range []string{
		"STLS\r\nUSER alice\r\nPASS pw\r\n",
		"AUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n" + b64("alice") + "\r\n" + b64("pw") + "\r\nSTAT\r\n",
		"AUTH PLAIN " + b64("\x00alice\x00pw\r\nDELE 1") + "\r\n",
		"APOP alice good\r\nRETR 1\r\n",
		"USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS pw\r\nLIST\r\nQUIT\r\n",
		"USER a\rPASS b\r\n\x00\r\nUSER " + strings.Repeat("x", 3000) + "\r\nQUIT\r\n",
	} {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(fuzzAPOP|fuzzBackendSASL))
	}
	f.Fuzz(func(t *testing.T, data []byte, flags uint8) {
		client := &testkit.MemConn{In: bytes.NewReader(data), Port: 110}
		back := &fuzzBackend{sasl: flags&fuzzBackendSASL != 0}
		s := &protocols.Session{
			ID: "fuzz", Conn: client, MaxLine: 1024,
			Log:        slog.New(slog.DiscardHandler),
			RequireTLS: flags&fuzzRequireTLS != 0, APOP: flags&fuzzAPOP != 0, TLSActive: flags&fuzzTLSActive != 0,
			Dial: func(ctx context.Context, login string, hello func(context.Context, *protocols.Backend) error) (*protocols.Backend, error) {
				if flags&fuzzDialFails != 0 {
					return nil, errors.New("no backend")
				}
				back.dials++
				back.reset()
				b := protocols.NewBackend(back, "fuzz", "mem", nil)
				b.ForwardClient = flags&fuzzForward != 0
				if err := hello(ctx, b); err != nil {
					return nil, err
				}
				return b, nil
			},
		}
		if flags&fuzzHasTLS != 0 {
			s.TLS = serverTLS()
		}
		relay, _ := Handler{}.Serve(context.Background(), s)

		out := client.Out.String()
		if out != "" && !strings.HasSuffix(out, "\r\n") || strings.Contains(strings.ReplaceAll(out, "\r\n", ""), "\n") {
			t.Fatalf("reply is not CRLF lines: %q", out)
		}
		for _, l := range back.Lines {
			verb, _, _ := strings.Cut(l, " ")
			switch verb {
			case "CAPA", "USER", "PASS", "AUTH", "APOP", "XCLIENT", "QUIT":
			default:
				t.Fatalf("backend got %q", l)
			}
			if strings.ContainsAny(l, "\x00\r") {
				t.Fatalf("backend got a control character: %q", l)
			}
			if s.RequireTLS && !s.TLSActive && verb != "CAPA" && verb != "QUIT" && verb != "XCLIENT" {
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

// fuzzBackend is an in-memory POP3 backend connection: every line written
// to it is answered at once. alice/pw logs in; APOP takes the digest "good".
type fuzzBackend struct {
	testkit.Scripted
	sasl     bool
	loggedIn bool
	user     string
	dials    int
}

func (b *fuzzBackend) reset() {
	b.user = ""
	b.Answer = b.answer
	b.Reset("+OK [XCLIENT] fuzz ready. <1.2@fuzz>\r\n")
}

func (b *fuzzBackend) answer(line string) string {
	verb, arg, _ := strings.Cut(line, " ")
	ok := false
	switch verb {
	case "CAPA":
		if b.sasl {
			return "+OK\r\nUSER\r\nSASL PLAIN\r\n."
		}
		return "+OK\r\nUSER\r\n."
	case "USER":
		b.user = arg
		return "+OK"
	case "PASS":
		ok = b.user == "alice" && arg == "pw"
	case "AUTH":
		ok = arg == "PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw"))
	case "APOP":
		ok = arg == "alice good"
	case "XCLIENT", "QUIT":
		return "+OK"
	default:
		return "-ERR Unknown command."
	}
	if ok {
		b.loggedIn = true
		return "+OK Logged in."
	}
	return "-ERR [AUTH] Authentication failed."
}

// FuzzParseCommand checks the line parser on its own: a command it accepts
// has an upper-case keyword and gives back the line it came from.
func FuzzParseCommand(f *testing.F) {
	for _, tr := range loadTranscripts(f) {
		for _, l := range strings.Split(tr.ClientBytes(), "\r\n") {
			f.Add([]byte(l))
		}
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		cmd, err := parseCommand(line)
		if err != nil {
			return
		}
		if cmd.verb == "" || strings.ToUpper(cmd.verb) != cmd.verb || len(cmd.verb) > maxVerb {
			t.Fatalf("verb %q", cmd.verb)
		}
		back := cmd.verb
		if len(line) > len(cmd.verb) {
			back += " " + cmd.arg
		}
		if !strings.EqualFold(back, string(line)) {
			t.Fatalf("%q parsed as %+v", line, cmd)
		}
		if !safeArg(cmd.arg) {
			t.Fatalf("argument with a line break: %q", cmd.arg)
		}
	})
}
