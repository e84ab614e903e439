package managesieve

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"

	"mailproxy/protocols"
	mtls "mailproxy/tls"
)

// Bounds on what a backend may send before login.
const (
	maxBackendLine  = 64 << 10 // one line, and all the literals of one response
	maxBackendLines = 100      // capability lines before the OK
)

// errBackend is a backend that does not speak ManageSieve as expected.
var errBackend = errors.New("unexpected backend response")

// response is one line from a backend, literals included: a capability
// line, a SASL challenge, or OK / NO / BYE with its code and text.
type response struct {
	toks []token
	raw  []byte // as received, line endings included, for relaying
}

// kind is "OK", "NO" or "BYE" (upper case) for a status response, else "".
func (r response) kind() string {
	if len(r.toks) == 0 || r.toks[0].str {
		return ""
	}
	switch k := strings.ToUpper(r.toks[0].s); k {
	case "OK", "NO", "BYE":
		return k
	}
	return ""
}

// challenge reports whether r is a SASL challenge (a string alone) and
// returns it.
func (r response) challenge() (string, bool) {
	if len(r.toks) == 1 && r.toks[0].str {
		return r.toks[0].s, true
	}
	return "", false
}

func (r response) String() string {
	return truncate(strings.TrimRight(string(r.raw), "\r\n"))
}

// readResponse reads one logical line from a backend, with the literals
// ({n}) it announces, all of it within maxBackendLine.
func readResponse(r *bufio.Reader) (response, error) {
	var resp response
	budget := maxBackendLine
	for {
		line, err := protocols.ReadLine(r, budget)
		if err != nil {
			return resp, err
		}
		budget -= len(line)
		resp.raw = append(append(resp.raw, line...), '\r', '\n')
		toks, lit, err := tokenize(string(line))
		resp.toks = append(resp.toks, toks...)
		if err != nil {
			return resp, fmt.Errorf("%w: %v", errBackend, err)
		}
		if lit < 0 {
			return resp, nil
		}
		if budget -= lit; budget < 0 {
			return resp, fmt.Errorf("%w: response over %d bytes", errBackend, maxBackendLine)
		}
		buf := make([]byte, lit)
		if _, err := io.ReadFull(r, buf); err != nil {
			return resp, err
		}
		resp.raw = append(resp.raw, buf...)
		resp.toks = append(resp.toks, token{s: string(buf), str: true})
	}
}

// readCapabilities reads capability lines up to the OK that ends them
// (the greeting, the answer to CAPABILITY, and what follows STARTTLS).
func readCapabilities(r *bufio.Reader) ([]capability, error) {
	var caps []capability
	for range maxBackendLines {
		resp, err := readResponse(r)
		if err != nil {
			return nil, err
		}
		switch resp.kind() {
		case "OK":
			return caps, nil
		case "NO", "BYE":
			return nil, fmt.Errorf("%w: %s", errBackend, resp)
		}
		if len(resp.toks) == 0 || !resp.toks[0].str {
			return nil, fmt.Errorf("%w: %s", errBackend, resp)
		}
		c := capability{name: strings.ToUpper(resp.toks[0].s)}
		if len(resp.toks) > 1 {
			c.value, c.hasValue = resp.toks[1].s, true
		}
		caps = append(caps, c)
	}
	return nil, fmt.Errorf("%w: more than %d capability lines", errBackend, maxBackendLines)
}

// hello returns the hello for Session.Dial: read the greeting, STARTTLS
// when the backend's tls says so, and tell the backend who the client is
// when forward_client is on and it has XCLIENT. h learns the backend's
// capabilities for the greetings of later clients.
func (h *Handler) hello(s *protocols.Session, client net.Addr) func(context.Context, *protocols.Backend) error {
	return func(ctx context.Context, b *protocols.Backend) error {
		caps, err := readCapabilities(b.Reader)
		if err != nil {
			return fmt.Errorf("read greeting: %w", err)
		}
		if b.StartTLS {
			if caps, err = startTLS(ctx, b); err != nil {
				return fmt.Errorf("starttls: %w", err)
			}
		}
		h.learn(caps)
		b.Caps = capNames(caps)
		if hasCap(caps, "SASL") {
			b.Caps = append(b.Caps, saslMechs(caps)...)
		}
		if b.ForwardClient && hasCap(caps, "XCLIENT") {
			forward(b, s, client)
		}
		return nil
	}
}

// startTLS upgrades the backend connection and reads the capabilities it
// gives again (RFC 5804 §2.2). The fresh reader of SetConn drops anything
// the backend sent before the handshake.
func startTLS(ctx context.Context, b *protocols.Backend) ([]capability, error) {
	resp, err := command(b, "STARTTLS")
	if err != nil {
		return nil, err
	}
	if resp.kind() != "OK" {
		return nil, fmt.Errorf("%w: %s", errBackend, resp)
	}
	tc, err := mtls.Handshake(ctx, b.Conn, b.TLS, false)
	if err != nil {
		return nil, err
	}
	b.SetConn(tc)
	return readCapabilities(b.Reader)
}

// forward sends Pigeonhole's XCLIENT with the client's address, so the
// backend's log and its login_trusted_networks checks see the real client.
// A refusal (mailproxy is not trusted there) is no reason to fail.
func forward(b *protocols.Backend, s *protocols.Session, client net.Addr) {
	host, port, err := net.SplitHostPort(client.String())
	if err != nil {
		return // a unix socket client: nothing to say
	}
	resp, err := command(b, "XCLIENT ADDR="+host+" PORT="+port+" SESSION="+s.ID)
	if err == nil && resp.kind() != "OK" {
		s.Log.Warn("backend refused XCLIENT", "backend", b.Name, "reply", resp.String())
	}
}

// command sends one line and reads one response.
func command(b *protocols.Backend, line string) (response, error) {
	if _, err := io.WriteString(b.Conn, line+"\r\n"); err != nil {
		return response{}, err
	}
	return readResponse(b.Reader)
}

// backendLogin logs in to b with creds: AUTHENTICATE "PLAIN" with the
// initial response when the backend offers PLAIN, else "LOGIN", which
// cannot carry an Authzid. It returns the backend's final response, OK or
// NO, for the client; a BYE or a broken exchange is an error.
func backendLogin(b *protocols.Backend, creds protocols.Credentials) (response, error) {
	b64 := func(s string) string { return quote(base64.StdEncoding.EncodeToString([]byte(s)), true) }
	var resp response
	var err error
	switch {
	case slices.Contains(b.Caps, "SASL:PLAIN"):
		resp, err = command(b, `AUTHENTICATE "PLAIN" `+b64(creds.Authzid+"\x00"+creds.Username+"\x00"+string(creds.Password)))
	case creds.Authzid != "":
		return resp, fmt.Errorf("%w: backend has no SASL PLAIN, which a login with an authorisation identity needs", errBackend)
	case slices.Contains(b.Caps, "SASL:LOGIN"):
		resp, err = command(b, `AUTHENTICATE "LOGIN"`)
		for _, answer := range []string{creds.Username, string(creds.Password)} {
			if _, ok := resp.challenge(); err != nil || !ok {
				break
			}
			resp, err = command(b, b64(answer))
		}
	default:
		return resp, fmt.Errorf("%w: backend offers neither SASL PLAIN nor LOGIN", errBackend)
	}
	if err != nil {
		return resp, err
	}
	if _, ok := resp.challenge(); ok {
		command(b, `"*"`) // more challenges than the mechanism has
		return resp, fmt.Errorf("%w: SASL goes on after the last response", errBackend)
	}
	switch resp.kind() {
	case "OK", "NO":
		return resp, nil
	}
	return resp, fmt.Errorf("%w: AUTHENTICATE answered %s", errBackend, resp)
}

// capability is one line of a capability response.
type capability struct {
	name     string // upper case
	value    string
	hasValue bool
}

func (c capability) wire() string {
	if !c.hasValue {
		return quote(c.name, false)
	}
	return quote(c.name, false) + " " + quote(c.value, false)
}

func hasCap(caps []capability, name string) bool {
	for _, c := range caps {
		if c.name == name {
			return true
		}
	}
	return false
}

func capNames(caps []capability) []string {
	out := make([]string, 0, len(caps))
	for _, c := range caps {
		out = append(out, c.name)
	}
	return out
}

// saslMechs lists the SASL mechanisms as "SASL:PLAIN" entries for
// Backend.Caps.
func saslMechs(caps []capability) []string {
	var out []string
	for _, c := range caps {
		if c.name == "SASL" {
			for _, m := range strings.Fields(c.value) {
				out = append(out, "SASL:"+strings.ToUpper(m))
			}
		}
	}
	return out
}

func truncate(s string) string {
	if len(s) > 120 {
		return s[:120] + "..." + strconv.Itoa(len(s)-120) + " more bytes"
	}
	return s
}
