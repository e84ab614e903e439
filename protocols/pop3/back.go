package pop3

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"mailproxy/protocols"
)

// maxBackendLine bounds a backend's response line before login.
const maxBackendLine = 64 << 10

// maxCapaLines bounds a backend's CAPA list.
const maxCapaLines = 256

// maxMultiBytes bounds a multi-line response read before login (CAPA).
const maxMultiBytes = 64 << 10

// errBackend is a backend that does not speak POP3 as expected.
var errBackend = errors.New("unexpected backend response")

// errNoPlain is a login with an authorisation identity (a master user's)
// to a backend without SASL PLAIN: USER and PASS cannot carry it.
var errNoPlain = errors.New(`backend has no SASL PLAIN, which a login with an authorisation identity (backend_login = "master") needs`)

// greet is the hello for Session.Dial: read the +OK greeting (kept in
// b.Greeting; it carries an APOP timestamp and Dovecot's [XCLIENT]) and do
// STLS when the backend's tls says so.
func greet(ctx context.Context, b *protocols.Backend) error {
	line, err := protocols.ReadLine(b.Reader, maxBackendLine)
	if err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	b.Greeting = string(line)
	if ok, err := status(b.Greeting); !ok || err != nil {
		return fmt.Errorf("%w: greeting %q", errBackend, protocols.Truncate(b.Greeting))
	}
	if !b.StartTLS {
		return nil
	}
	if line, err := backendCommand(b, "STLS"); err != nil {
		return fmt.Errorf("stls: %w", err)
	} else if ok, _ := status(line); !ok {
		return fmt.Errorf("stls: %w: %q", errBackend, protocols.Truncate(line))
	}
	return b.UpgradeTLS(ctx)
}

// backendCommand sends one command line and reads the one-line response.
func backendCommand(b *protocols.Backend, line string) (string, error) {
	if _, err := io.WriteString(b.Conn, line+"\r\n"); err != nil {
		return "", err
	}
	resp, err := protocols.ReadLine(b.Reader, maxBackendLine)
	if err != nil {
		return "", err
	}
	return string(resp), nil
}

// prepare gets the backend ready for a login: it asks CAPA (a server of
// plain RFC 1939 answers -ERR and has no capabilities) and, with
// forward_client, tells the backend who the client is with XCLIENT.
func prepare(b *protocols.Backend, s *protocols.Session) error {
	if b.Caps == nil {
		line, err := backendCommand(b, "CAPA")
		if err != nil {
			return fmt.Errorf("capa: %w", err)
		}
		ok, err := status(line)
		if err != nil {
			return fmt.Errorf("capa: %w", err)
		}
		b.Caps = []string{}
		if ok {
			if b.Caps, err = readMulti(b.Reader, maxCapaLines); err != nil {
				return fmt.Errorf("capa: %w", err)
			}
		}
	}
	if b.ForwardClient && offersXCLIENT(b) {
		line, err := backendCommand(b, forwardXCLIENT(s))
		if err != nil {
			return fmt.Errorf("xclient: %w", err)
		}
		if ok, err := status(line); !ok || err != nil {
			s.Log.Debug("backend refused XCLIENT", "backend", b.Name, "reply", protocols.Truncate(line))
		}
	}
	return nil
}

// offersXCLIENT: Dovecot announces XCLIENT with a [XCLIENT] code in its
// greeting to trusted networks, and lists nothing in CAPA; other servers
// may list it in CAPA.
func offersXCLIENT(b *protocols.Backend) bool {
	return strings.HasPrefix(b.Greeting, "+OK [XCLIENT]") || hasCap(b.Caps, "XCLIENT", "")
}

// forwardXCLIENT is the XCLIENT command with the client's address and
// port, and mailproxy's session id (Dovecot logs it as session=<id>, so one
// id finds the session in both logs).
func forwardXCLIENT(s *protocols.Session) string {
	host, port, _ := net.SplitHostPort(s.Conn.RemoteAddr().String())
	cmd := fmt.Sprintf("XCLIENT ADDR=%s PORT=%s", host, port)
	if s.ID != "" {
		cmd += " SESSION=" + s.ID
	}
	return cmd
}

// backendLogin logs in to b with creds: AUTH PLAIN with the initial
// response when the backend's CAPA lists SASL PLAIN, USER and PASS
// otherwise (errNoPlain for credentials with an Authzid). ok says whether
// the backend accepted; text is its reply line, for the client. The
// credentials must have passed safeArg.
//
// A passthrough login (creds.Mech) is AUTH with that mechanism, each
// backend challenge relayed to the client through step.
func backendLogin(b *protocols.Backend, creds protocols.Credentials, step func(string) (string, error)) (ok bool, text string, err error) {
	if creds.Mech != "" {
		return authPassthrough(b, creds, step)
	}
	if hasCap(b.Caps, "SASL", protocols.MechPlain) {
		return authPlain(b, creds)
	}
	if creds.Authzid != "" {
		return false, "", errNoPlain
	}
	line, err := backendCommand(b, "USER "+creds.Username)
	if err != nil {
		return false, "", fmt.Errorf("user: %w", err)
	}
	if ok, err := status(line); !ok || err != nil {
		return false, line, err
	}
	if line, err = backendCommand(b, "PASS "+string(creds.Password)); err != nil {
		return false, "", fmt.Errorf("pass: %w", err)
	}
	ok, err = status(line)
	return ok, line, err
}

// authPlain is AUTH PLAIN with the initial response (RFC 5034 §4); a
// backend that asks with "+ " anyway gets the response on the next line.
func authPlain(b *protocols.Backend, creds protocols.Credentials) (bool, string, error) {
	ir := base64.StdEncoding.EncodeToString([]byte(creds.Authzid + "\x00" + creds.Username + "\x00" + string(creds.Password)))
	line, err := backendCommand(b, "AUTH PLAIN "+ir)
	if err == nil && (line == "+" || strings.HasPrefix(line, "+ ")) {
		line, err = backendCommand(b, ir)
	}
	if err != nil {
		return false, "", fmt.Errorf("auth plain: %w", err)
	}
	ok, err := status(line)
	return ok, line, err
}

// backendAPOP sends "APOP " + arg as the client wrote it.
func backendAPOP(b *protocols.Backend, arg string) (bool, string, error) {
	line, err := backendCommand(b, "APOP "+arg)
	if err != nil {
		return false, "", fmt.Errorf("apop: %w", err)
	}
	ok, err := status(line)
	return ok, line, err
}

// quit ends a backend connection politely, without waiting long.
func quit(b *protocols.Backend) {
	b.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(b.Conn, "QUIT\r\n")
	b.Close()
}

// hasCap reports whether caps has a line whose tag is name and, when arg
// is not empty, that lists arg among its parameters (as "SASL PLAIN LOGIN").
func hasCap(caps []string, name, arg string) bool {
	for _, c := range caps {
		f := strings.Fields(c)
		if len(f) == 0 || !strings.EqualFold(f[0], name) {
			continue
		}
		if arg == "" {
			return true
		}
		for _, p := range f[1:] {
			if strings.EqualFold(p, arg) {
				return true
			}
		}
	}
	return false
}
