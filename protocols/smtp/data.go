package smtp

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// Data implements gosmtp.Session. go-smtp has already said 354 to the
// client, and drains the client's message after Data returns, whatever
// happened. A BDAT message arrives here assembled and goes on as DATA
// (go-smtp's client has no BDAT).
func (f *front) Data(r io.Reader) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() {
		if f.logoutPending.Swap(false) {
			f.logout()
		}
	}()
	if f.back == nil || !f.inTx {
		return errBackendLost
	}
	bk := f.back
	w, err := bk.c.Data()
	if err != nil {
		return f.backendReply(err, "DATA")
	}
	size, err := copyMessage(w, r, bk.b)
	if err != nil {
		return f.abortData(err)
	}
	resp, err := w.CloseWithResponse()
	f.inTx = false
	if err != nil {
		return f.backendReply(err, "end of DATA")
	}
	f.s.Log.Info("message relayed", "backend", bk.b.Name, "from", f.from, "rcpts", f.rcpts, "size", size, "reply", resp.StatusText)
	return accepted(resp.StatusText)
}

// backendWriteError is a failed write of message data to the backend, as
// against a failed read from the client.
type backendWriteError struct{ err error }

func (e backendWriteError) Error() string { return "write to backend: " + e.err.Error() }
func (e backendWriteError) Unwrap() error { return e.err }

// copyMessage streams the message to the backend's DATA, with a write
// deadline per block (go-smtp's client sets none while the body is sent).
func copyMessage(w io.Writer, r io.Reader, b *protocols.Backend) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			b.SetWriteDeadline(time.Now().Add(backendTimeout))
			if _, err := w.Write(buf[:m]); err != nil {
				return n, backendWriteError{err}
			}
			n += int64(m)
		}
		switch {
		case rerr == io.EOF:
			return n, nil
		case rerr != nil:
			return n, rerr
		}
	}
}

// abortData ends a DATA that cannot be completed. SMTP cannot abort DATA
// (a final dot would deliver what was sent so far), so the backend
// connection is closed, which makes the backend discard the message; the
// next transaction gets a new connection. The caller holds mu.
func (f *front) abortData(err error) error {
	var werr backendWriteError
	if errors.As(err, &werr) {
		f.drop(fmt.Errorf("DATA: %w", werr.err))
		return errBackendLost
	}
	bk := f.back
	f.back, f.inTx = nil, false
	bk.close()
	f.s.Log.Info("message not relayed", "backend", bk.b.Name, "from", f.from, "reason", err)
	var se *gosmtp.SMTPError
	switch {
	case errors.As(err, &se):
		return se // 552 5.3.4 over SIZE, from go-smtp's reader
	case errors.Is(err, gosmtp.ErrTooLongLine):
		return errLineTooLong
	}
	return errAborted
}

// accepted is the backend's 250 to the final dot, returned as the error
// go-smtp relays verbatim: a nil error would make go-smtp send its own
// text, and the backend's ("queued as ...") is the one worth having.
func accepted(text string) error {
	code, msg := SplitEnhanced(text)
	return &gosmtp.SMTPError{Code: 250, EnhancedCode: code, Message: msg}
}

// SplitEnhanced takes the RFC 2034 enhanced code off a reply text, off each
// of its lines as go-smtp's client does for errors.
func SplitEnhanced(text string) (gosmtp.EnhancedCode, string) {
	first, rest, ok := strings.Cut(text, " ")
	if !ok {
		return gosmtp.EnhancedCodeNotSet, text
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return gosmtp.EnhancedCodeNotSet, text
	}
	var code gosmtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return gosmtp.EnhancedCodeNotSet, text
		}
		code[i] = n
	}
	return code, strings.ReplaceAll(rest, "\n"+first+" ", "\n")
}
