package lmtp

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols/smtp"
)

// Data implements gosmtp.Session. In LMTP mode go-smtp calls LMTPData
// instead; should it ever call this, no recipient is acknowledged.
func (f *front) Data(r io.Reader) error { return errAborted }

// LMTPData implements gosmtp.LMTPSession. go-smtp has already said 354 to
// the client; it writes one reply per recipient, in RCPT order, as
// status receives them, and drains the client's message after we return.
//
// Every live backend transaction gets DATA, then the message as it comes
// (one copy of each block to each backend), then the final dot; the
// backends' replies are read at the same time, each recipient's passed on
// as its backend worded it. A backend that fails anywhere on the way is
// cut off and its recipients get 451; the others go on. The returned error
// is the status of any recipient not given one, which never happens by
// design; it is a 451, so that no recipient can be acknowledged by mistake.
func (f *front) LMTPData(r io.Reader, status gosmtp.StatusCollector) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var live []*txData
	for _, t := range f.txs {
		if len(t.rcpts) == 0 {
			continue
		}
		if t.err == nil {
			w, err := t.c.Data()
			if err == nil {
				live = append(live, &txData{tx: t, w: w})
				continue
			}
			f.txReply(t, err, "DATA")
		}
		f.failRcpts(t, status, t.err)
	}
	size, err := f.fanOut(r, live)
	if err != nil {
		for _, d := range live {
			d.tx.fail(err) // no final dot: the backends drop the message
		}
		f.s.Log.Info("message not delivered", "from", *f.from, "rcpts", len(f.rcpts), "reason", err)
		return clientError(err)
	}
	var wg sync.WaitGroup
	for _, d := range live {
		if d.tx.err != nil {
			f.failRcpts(d.tx, status, d.tx.err)
			continue
		}
		wg.Go(func() { f.finish(d.tx, d.w, status, size) })
	}
	wg.Wait()
	return errBackendLost
}

// txData is a backend transaction whose DATA was accepted.
type txData struct {
	tx *tx
	w  *gosmtp.DataCommand
}

// fanOut copies the message to every live backend, a block at a time with
// a write deadline per block. A backend whose write fails is cut off (its
// tx fails); an error reading from the client ends the whole message.
func (f *front) fanOut(r io.Reader, live []*txData) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			n += int64(m)
			for _, d := range live {
				if d.tx.err != nil {
					continue
				}
				d.tx.b.SetWriteDeadline(time.Now().Add(backendTimeout))
				if _, err := d.w.Write(buf[:m]); err != nil {
					d.tx.fail(fmt.Errorf("write message: %w", err))
					f.s.Log.Warn("backend transaction failed", "backend", d.tx.backend, "during", "DATA", "err", err)
				}
			}
		}
		switch {
		case rerr == io.EOF:
			return n, nil
		case rerr != nil:
			return n, rerr
		}
	}
}

// finish sends the final dot to one backend and passes each of its
// recipients' replies on. It runs beside the other backends' finish: a
// slow delivery on one backend does not hold up the others' replies more
// than go-smtp's RCPT order requires.
func (f *front) finish(t *tx, w *gosmtp.DataCommand, status gosmtp.StatusCollector, size int64) {
	t.b.SetWriteDeadline(time.Now().Add(backendTimeout))
	resps, err := w.CloseWithLMTPResponse()
	var perRcpt gosmtp.LMTPDataError
	errors.As(err, &perRcpt)
	broken := err != nil && (perRcpt == nil || isJoined(err))
	accepted := 0
	for _, to := range t.rcpts {
		switch {
		case resps[to] != nil:
			accepted++
			status.SetStatus(to, backendOK(to, resps[to].StatusText))
		case perRcpt[to] != nil:
			status.SetStatus(to, relayed(to, perRcpt[to]))
		default: // the connection broke before this recipient's reply
			status.SetStatus(to, errBackendLost)
		}
	}
	if broken {
		t.fail(fmt.Errorf("end of DATA: %w", err))
		f.s.Log.Warn("backend transaction failed", "backend", t.backend, "during", "end of DATA", "err", err)
	}
	f.s.Log.Info("message delivered", "backend", t.backend, "from", *f.from, "rcpts", len(t.rcpts), "accepted", accepted, "size", size)
}

// isJoined reports whether err joins a broken connection to per-recipient
// errors, as go-smtp's client does when the connection breaks after some
// recipients' replies.
func isJoined(err error) bool {
	if _, ok := err.(gosmtp.LMTPDataError); ok {
		return false
	}
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return false
	}
	for _, e := range j.Unwrap() {
		var lde gosmtp.LMTPDataError
		if !errors.As(e, &lde) {
			return true
		}
	}
	return false
}

// failRcpts gives every recipient of t the reply for err: the backend's
// own refusal, or 451 when the backend is lost.
func (f *front) failRcpts(t *tx, status gosmtp.StatusCollector, err error) {
	var se *gosmtp.SMTPError
	reply := error(errBackendLost)
	if errors.As(err, &se) && se.Code != 421 {
		reply = se
	}
	for _, to := range t.rcpts {
		status.SetStatus(to, reply)
	}
}

// clientError is the status of every recipient when reading the client's
// message failed: go-smtp's own reply (552 over the size, line too long)
// when it has one, else 451.
func clientError(err error) error {
	var se *gosmtp.SMTPError
	switch {
	case errors.As(err, &se):
		return se
	case errors.Is(err, gosmtp.ErrTooLongLine):
		return errLineTooLong
	}
	return errAborted
}

// backendOK is a backend's 250 for one recipient, returned as the error
// go-smtp relays verbatim (a nil error would make go-smtp send its own
// text), without the "<rcpt>" go-smtp puts in front of it again.
func backendOK(to, text string) error {
	code, msg := smtp.SplitEnhanced(text)
	return &gosmtp.SMTPError{Code: 250, EnhancedCode: code, Message: stripRcpt(to, msg)}
}

// relayed is a backend's refusal for one recipient, likewise.
func relayed(to string, se *gosmtp.SMTPError) error {
	code := se.Code
	if code == 421 { // the backend closes; the client's session goes on
		code = 451
	}
	return &gosmtp.SMTPError{Code: code, EnhancedCode: se.EnhancedCode, Message: stripRcpt(to, se.Message)}
}

func stripRcpt(to, msg string) string {
	return strings.TrimPrefix(msg, "<"+to+"> ")
}
