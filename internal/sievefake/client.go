package sievefake

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Client is a minimal ManageSieve client. Every read and write has a
// deadline of Timeout (default 5 s).
type Client struct {
	Conn    net.Conn
	Timeout time.Duration
	// Caps are the capabilities of the last greeting or CAPABILITY,
	// upper-case name -> value.
	Caps map[string]string

	r *bufio.Reader
}

// Dial connects to addr and reads the greeting.
func Dial(addr string) (*Client, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return NewClient(c)
}

// NewClient reads the greeting on c.
func NewClient(c net.Conn) (*Client, error) {
	cl := &Client{Conn: c, Timeout: 5 * time.Second, r: bufio.NewReader(c)}
	if err := cl.readCaps(); err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

// Response is a server's answer: the lines before the status, and the
// status line itself.
type Response struct {
	Lines  [][]string // each data line's strings and atoms, decoded
	Status string     // OK, NO or BYE
	Text   string     // the status line after the status word, raw
}

// Err is nil for OK, else an error that quotes the status line.
func (r *Response) Err() error {
	if r.Status == "OK" {
		return nil
	}
	return fmt.Errorf("%s %s", r.Status, r.Text)
}

// Send writes raw bytes (the caller adds CRLF).
func (c *Client) Send(raw string) error {
	c.Conn.SetWriteDeadline(time.Now().Add(c.Timeout))
	_, err := io.WriteString(c.Conn, raw)
	return err
}

// Cmd sends one command line and reads the response.
func (c *Client) Cmd(line string) (*Response, error) {
	if err := c.Send(line + "\r\n"); err != nil {
		return nil, err
	}
	return c.ReadResponse()
}

// ReadResponse reads lines up to OK, NO or BYE.
func (c *Client) ReadResponse() (*Response, error) {
	resp := &Response{}
	for {
		args, raw, err := c.ReadLine()
		if err != nil {
			return resp, err
		}
		if len(args) > 0 && !strings.HasPrefix(raw, `"`) && !strings.HasPrefix(raw, "{") {
			switch w := strings.ToUpper(args[0]); w {
			case "OK", "NO", "BYE":
				resp.Status = w
				resp.Text = strings.TrimSpace(raw[len(w):])
				return resp, nil
			}
		}
		resp.Lines = append(resp.Lines, args)
	}
}

// ReadLine reads one logical line with its literals, and returns its
// strings and atoms decoded, and the line as sent (literals left out).
func (c *Client) ReadLine() ([]string, string, error) {
	var args []string
	var raw strings.Builder
	for {
		c.Conn.SetReadDeadline(time.Now().Add(c.Timeout))
		line, err := c.r.ReadString('\n')
		if err != nil {
			return nil, raw.String(), err
		}
		line = strings.TrimRight(line, "\r\n")
		raw.WriteString(line)
		more, n, err := splitArgs(line)
		if err != nil {
			return nil, raw.String(), err
		}
		args = append(args, more...)
		if n < 0 {
			return args, raw.String(), nil
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(c.r, buf); err != nil {
			return nil, raw.String(), err
		}
		args = append(args, string(buf))
	}
}

func (c *Client) readCaps() error {
	resp, err := c.ReadResponse()
	if err != nil {
		return err
	}
	if err := resp.Err(); err != nil {
		return err
	}
	c.Caps = map[string]string{}
	for _, l := range resp.Lines {
		if len(l) == 0 {
			continue
		}
		v := ""
		if len(l) > 1 {
			v = l[1]
		}
		c.Caps[strings.ToUpper(l[0])] = v
	}
	return nil
}

// Capability asks for the capabilities again.
func (c *Client) Capability() error {
	if err := c.Send("CAPABILITY\r\n"); err != nil {
		return err
	}
	return c.readCaps()
}

// StartTLS upgrades the connection and reads the capabilities the server
// sends after the handshake.
func (c *Client) StartTLS(cfg *tls.Config) error {
	resp, err := c.Cmd("STARTTLS")
	if err != nil {
		return err
	}
	if err := resp.Err(); err != nil {
		return err
	}
	tc := tls.Client(c.Conn, cfg)
	tc.SetDeadline(time.Now().Add(c.Timeout))
	if err := tc.Handshake(); err != nil {
		return err
	}
	tc.SetDeadline(time.Time{})
	c.Conn, c.r = tc, bufio.NewReader(tc)
	return c.readCaps()
}

// AuthPlain logs in with SASL PLAIN, the initial response on the command
// line as a quoted string, or as a literal ({n+}) when literal is set.
func (c *Client) AuthPlain(user, pass string, literal bool) (*Response, error) {
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	arg := `"` + ir + `"`
	if literal {
		arg = fmt.Sprintf("{%d+}\r\n%s", len(ir), ir)
	}
	return c.Cmd(`AUTHENTICATE "PLAIN" ` + arg)
}

// AuthLogin logs in with SASL LOGIN: the server asks for the user name
// and the password, each answered as a quoted string.
func (c *Client) AuthLogin(user, pass string) (*Response, error) {
	if err := c.Send("AUTHENTICATE \"LOGIN\"\r\n"); err != nil {
		return nil, err
	}
	for _, a := range []string{user, pass} {
		args, raw, err := c.ReadLine()
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(raw, `"`) && !strings.HasPrefix(raw, "{") {
			return &Response{Status: strings.ToUpper(args[0]), Text: raw}, nil
		}
		if err := c.Send(`"` + base64.StdEncoding.EncodeToString([]byte(a)) + "\"\r\n"); err != nil {
			return nil, err
		}
	}
	return c.ReadResponse()
}

// PutScript uploads a script as a literal.
func (c *Client) PutScript(name, script string) error {
	resp, err := c.Cmd(fmt.Sprintf("PUTSCRIPT %q {%d+}\r\n%s", name, len(script), script))
	if err != nil {
		return err
	}
	return resp.Err()
}

// ListScripts returns the script names, "name ACTIVE" for the active one.
func (c *Client) ListScripts() ([]string, error) {
	resp, err := c.Cmd("LISTSCRIPTS")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range resp.Lines {
		out = append(out, strings.Join(l, " "))
	}
	return out, resp.Err()
}

// GetScript downloads a script.
func (c *Client) GetScript(name string) (string, error) {
	resp, err := c.Cmd(fmt.Sprintf("GETSCRIPT %q", name))
	if err != nil {
		return "", err
	}
	if err := resp.Err(); err != nil {
		return "", err
	}
	if len(resp.Lines) != 1 || len(resp.Lines[0]) != 1 {
		return "", fmt.Errorf("GETSCRIPT answered %q", resp.Lines)
	}
	return resp.Lines[0][0], nil
}

// Logout says goodbye and closes.
func (c *Client) Logout() error {
	defer c.Conn.Close()
	resp, err := c.Cmd("LOGOUT")
	if err != nil {
		return err
	}
	return resp.Err()
}
