package imap

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"mailproxy/protocols"
)

// Bounds on what a backend may send before login: one response line, and
// all the lines that answer one command (a login's untagged CAPABILITY and
// the like are a few hundred bytes).
const (
	maxBackendLine  = 64 << 10
	maxReplyBytes   = 256 << 10
	maxUntaggedRows = 1000
)

// errBackend is a backend that does not speak IMAP as expected.
var errBackend = errors.New("unexpected backend response")

// errNoLogin is a backend that offers no way to log in with the
// credentials at hand: its configuration, not its health.
var errNoLogin = errors.New("backend offers no usable login")

// greet is the hello for Session.Dial: read the greeting and do STARTTLS
// when the backend's tls says so.
func greet(ctx context.Context, b *protocols.Backend) error {
	line, err := protocols.ReadLine(b.Reader, maxBackendLine)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	b.Greeting = string(line)
	if !strings.HasPrefix(b.Greeting, "* OK") {
		return fmt.Errorf("%w: greeting %q", errBackend, protocols.Truncate(b.Greeting))
	}
	b.Caps = capabilityCode(b.Greeting)
	if !b.StartTLS {
		return nil
	}
	if _, _, err := backendCommand(b, "P0", "STARTTLS"); err != nil {
		return fmt.Errorf("starttls: %w", err)
	}
	return b.UpgradeTLS(ctx)
}

// backendCommand sends one command line and reads to its tagged response. It
// returns the tagged line without the tag and the untagged lines. Only OK
// counts as success; a NO or BAD comes back as an error.
func backendCommand(b *protocols.Backend, tag, line string) (string, []string, error) {
	if _, err := io.WriteString(b.Conn, tag+" "+line+"\r\n"); err != nil {
		return "", nil, err
	}
	resp, untagged, err := readTagged(b, tag)
	if err == nil && !strings.HasPrefix(resp, "OK") {
		err = fmt.Errorf("%w: %s", errBackend, protocols.Truncate(resp))
	}
	return resp, untagged, err
}

// readTagged reads the backend's lines up to the one tagged tag, at most
// maxUntaggedRows lines and maxReplyBytes in all.
func readTagged(b *protocols.Backend, tag string) (string, []string, error) {
	var untagged []string
	total := 0
	for {
		line, err := protocols.ReadLine(b.Reader, maxBackendLine)
		if err != nil {
			return "", untagged, err
		}
		if total += len(line); total > maxReplyBytes || len(untagged) >= maxUntaggedRows {
			return "", untagged, fmt.Errorf("%w: answer to %s over %d lines or %d bytes", errBackend, tag, maxUntaggedRows, maxReplyBytes)
		}
		s := string(line)
		if rest, ok := strings.CutPrefix(s, tag+" "); ok {
			return rest, untagged, nil
		}
		if strings.HasPrefix(s, "+") {
			return s, untagged, nil // a continuation request; the caller decides
		}
		untagged = append(untagged, s)
	}
}

// backendLogin logs in to b with creds: AUTHENTICATE PLAIN when the
// backend has it, else LOGIN, which cannot carry an Authzid. ok says whether
// the backend accepted; text is the tagged response to give the client
// without its tag ("OK [CAPABILITY ...] Logged in" or the backend's NO).
//
// A passthrough login (creds.Mech) is AUTHENTICATE with that mechanism,
// each backend challenge relayed to the client through step.
func backendLogin(ctx context.Context, b *protocols.Backend, creds protocols.Credentials, s *protocols.Session, client net.Addr, id []string, step func(string) (string, error)) (ok bool, text string, err error) {
	if b.Caps == nil {
		_, untagged, err := backendCommand(b, "P1", "CAPABILITY")
		if err != nil {
			return false, "", fmt.Errorf("capability: %w", err)
		}
		b.Caps = untaggedCapability(untagged)
	}
	// The ID goes in the same write as AUTHENTICATE (a pipeline: one round
	// trip instead of two per login); LOGIN is sent after its answer.
	idLine := ""
	if b.ForwardClient {
		idLine = "P2 " + forwardID(s, client, id)
	}
	var resp string
	var untagged []string
	switch {
	case creds.Mech != "":
		resp, untagged, err = authPassthrough(b, creds, idLine, s, step)
	case hasCap(b.Caps, "AUTH=PLAIN"):
		resp, untagged, err = authPlain(b, creds, idLine, s)
	case creds.Authzid != "":
		// LOGIN cannot carry it: logging in as the authcid instead would
		// open the master user's own mailbox, or the wrong one.
		return false, "", fmt.Errorf("%w: backend has no AUTH=PLAIN, which a login with an authorisation identity (backend_login = \"master\") needs", errNoLogin)
	case hasCap(b.Caps, "LOGINDISABLED"):
		return false, "", fmt.Errorf("%w: backend has LOGINDISABLED and no AUTH=PLAIN (set its tls)", errNoLogin)
	default:
		if idLine != "" {
			if _, err := io.WriteString(b.Conn, idLine+"\r\n"); err != nil {
				return false, "", err
			}
			if err := readID(b, s); err != nil {
				return false, "", err
			}
		}
		resp, untagged, err = loginCommand(b, creds)
	}
	if err != nil {
		return false, "", err
	}
	switch {
	case strings.HasPrefix(resp, "OK"):
		return withCapability(b, resp, untagged)
	case strings.HasPrefix(resp, "NO"):
		return false, resp, nil
	}
	return false, "NO [AUTHENTICATIONFAILED] " + strings.TrimSpace(strings.TrimPrefix(resp, "BAD")), nil
}

// readID reads the answer to the forwarded ID. A backend that refuses ID
// is no reason to fail the login.
func readID(b *protocols.Backend, s *protocols.Session) error {
	resp, _, err := readTagged(b, "P2")
	if err != nil {
		return fmt.Errorf("id: %w", err)
	}
	if !strings.HasPrefix(resp, "OK") {
		s.Log.Debug("backend refused ID", "backend", b.Name, "reply", protocols.Truncate(resp))
	}
	return nil
}

// authPlain sends AUTHENTICATE PLAIN, with the initial response on the
// command line when the backend has SASL-IR, after idLine (the forwarded
// ID) in the same write when there is one.
func authPlain(b *protocols.Backend, creds protocols.Credentials, idLine string, s *protocols.Session) (string, []string, error) {
	ir := base64.StdEncoding.EncodeToString([]byte(creds.Authzid + "\x00" + creds.Username + "\x00" + string(creds.Password)))
	line := "P3 AUTHENTICATE PLAIN"
	if hasCap(b.Caps, "SASL-IR") {
		line += " " + ir
	}
	if idLine != "" {
		line = idLine + "\r\n" + line
	}
	if _, err := io.WriteString(b.Conn, line+"\r\n"); err != nil {
		return "", nil, err
	}
	if idLine != "" {
		if err := readID(b, s); err != nil {
			return "", nil, err
		}
	}
	resp, untagged, err := readTagged(b, "P3")
	if err == nil && strings.HasPrefix(resp, "+") {
		if _, err := io.WriteString(b.Conn, ir+"\r\n"); err != nil {
			return "", nil, err
		}
		resp, untagged, err = readTagged(b, "P3")
		if err == nil && strings.HasPrefix(resp, "+") {
			io.WriteString(b.Conn, "*\r\n")
			return "", nil, fmt.Errorf("%w: more SASL challenges after PLAIN", errBackend)
		}
	}
	return resp, untagged, err
}

// loginCommand sends LOGIN, sending any argument that cannot be quoted as a
// literal (non-synchronising when the backend has LITERAL+).
func loginCommand(b *protocols.Backend, creds protocols.Credentials) (string, []string, error) {
	plus := hasCap(b.Caps, "LITERAL+")
	parts := []string{"P3 LOGIN"}
	for _, a := range []string{creds.Username, string(creds.Password)} {
		q, isLit := quote(a)
		if !isLit {
			parts[len(parts)-1] += " " + q
			continue
		}
		head, data, _ := strings.Cut(q, "\r\n")
		if plus {
			head = strings.TrimSuffix(head, "}") + "+}"
		}
		parts[len(parts)-1] += " " + head
		parts = append(parts, data)
	}
	for i, p := range parts {
		if _, err := io.WriteString(b.Conn, p); err != nil {
			return "", nil, err
		}
		if i == len(parts)-1 {
			break
		}
		if _, err := io.WriteString(b.Conn, "\r\n"); err != nil {
			return "", nil, err
		}
		if !plus {
			if resp, _, err := readTagged(b, "P3"); err != nil || !strings.HasPrefix(resp, "+") {
				return resp, nil, err
			}
		}
	}
	if _, err := io.WriteString(b.Conn, "\r\n"); err != nil {
		return "", nil, err
	}
	return readTagged(b, "P3")
}

// withCapability makes sure the client's tagged OK carries the backend's
// post-login capabilities, asking the backend when its OK did not.
func withCapability(b *protocols.Backend, resp string, untagged []string) (bool, string, error) {
	if capabilityCode(resp) != nil {
		return true, resp, nil
	}
	caps := untaggedCapability(untagged)
	if caps == nil {
		_, u, err := backendCommand(b, "P4", "CAPABILITY")
		if err != nil {
			return false, "", fmt.Errorf("capability after login: %w", err)
		}
		caps = untaggedCapability(u)
	}
	text := strings.TrimSpace(strings.TrimPrefix(resp, "OK"))
	return true, fmt.Sprintf("OK [CAPABILITY %s] %s", strings.Join(caps, " "), text), nil
}

// maxForwardID bounds the forwarded ID command: Dovecot's login process
// reads lines of up to 4 KiB, and what the client said in ID must not make
// the backend refuse the login.
const maxForwardID = 2048

// forwardID is the RFC 2971 ID command that tells a backend (Dovecot, with
// login_trusted_networks) who the real client is, followed by what the
// client itself said in ID, as many of its pairs as fit in maxForwardID.
func forwardID(s *protocols.Session, client net.Addr, id []string) string {
	host, port, _ := net.SplitHostPort(client.String())
	local, lport, _ := net.SplitHostPort(s.Conn.LocalAddr().String())
	ours := []string{"x-originating-ip", host, "x-originating-port", port,
		"x-connected-ip", local, "x-connected-port", lport, "x-session-ext-id", s.ID}
	var b strings.Builder
	b.WriteString("ID (")
	for i, f := range ours {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(idField(f))
	}
	for i := 0; i+1 < len(id); i += 2 {
		pair := " " + idField(id[i]) + " " + idField(id[i+1])
		if len("P2 ")+b.Len()+len(pair)+len(")") > maxForwardID {
			break
		}
		b.WriteString(pair)
	}
	b.WriteString(")")
	return b.String()
}

// idField quotes one ID field; one that would need a literal is sent empty,
// as this command is one line.
func idField(f string) string {
	if q, isLit := quote(f); !isLit {
		return q
	}
	return `""`
}

// capabilityCode extracts the list from a "[CAPABILITY ...]" response code.
func capabilityCode(line string) []string {
	_, after, ok := strings.Cut(line, "[CAPABILITY ")
	if !ok {
		return nil
	}
	list, _, ok := strings.Cut(after, "]")
	if !ok {
		return nil
	}
	return strings.Fields(list)
}

func untaggedCapability(lines []string) []string {
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "* CAPABILITY "); ok {
			return strings.Fields(rest)
		}
	}
	return nil
}

func hasCap(caps []string, c string) bool {
	for _, x := range caps {
		if strings.EqualFold(x, c) {
			return true
		}
	}
	return false
}
