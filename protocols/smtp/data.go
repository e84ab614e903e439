package smtp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"mailproxy/protocols"
)

// Data implements gosmtp.Session. go-smtp has already said 354 to the
// client, and drains the client's message after Data returns, whatever
// happened. A BDAT message arrives here assembled and goes on as DATA
// (go-smtp's client has no BDAT).
//
// DATA is spoken on the raw connection, as AUTH is (see backend.auth):
// go-smtp's client would re-encode the message a byte at a time through
// net/textproto's DotWriter and write it in 4 KiB pieces, the largest
// part of what mailproxy spent per message. sendMessage does the same
// encoding a line at a time, in one write per 32 KiB.
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
	b := bk.b
	b.SetDeadline(time.Now().Add(backendTimeout))
	defer b.SetDeadline(time.Time{})
	rep, err := command(b, "DATA")
	switch {
	case err != nil:
		return f.backendReply(err, "DATA")
	case rep.code != 354:
		return f.backendReply(rep.err(), "DATA")
	}
	size, err := sendMessage(b, r)
	if err != nil {
		return f.abortData(err)
	}
	b.SetReadDeadline(time.Now().Add(dataEndTimeout))
	rep, err = readReply(b.Reader)
	f.inTx = false
	switch {
	case err != nil:
		return f.backendReply(err, "end of DATA")
	case rep.code != 250:
		return f.backendReply(rep.err(), "end of DATA")
	}
	text := strings.Join(rep.lines, "\n")
	f.s.Log.Info("message relayed", "backend", b.Name, "from", f.from, "rcpts", f.rcpts, "size", size, "reply", text)
	return accepted(text)
}

// backendWriteError is a failed write of message data to the backend, as
// against a failed read from the client.
type backendWriteError struct{ err error }

func (e backendWriteError) Error() string { return "write to backend: " + e.err.Error() }
func (e backendWriteError) Unwrap() error { return e.err }

// dataBlock is how much of a message is read from the client, encoded
// and written to the backend at a time.
const dataBlock = 32 << 10

// dataBufs recycles sendMessage's buffers: the block read and its
// encoding (a block at most doubles, every line being a dot).
var dataBufs = sync.Pool{New: func() any { b := make([]byte, dataBlock, 3*dataBlock); return &b }}

// sendMessage streams the message r (go-smtp's reader, dot-stuffing
// already removed) to the backend after its 354, dot-stuffed again, and
// ends it with the final dot, with a write deadline per block. It returns
// the message's size.
func sendMessage(b *protocols.Backend, r io.Reader) (int64, error) {
	bp := dataBufs.Get().(*[]byte)
	defer dataBufs.Put(bp)
	in, out := (*bp)[:dataBlock], (*bp)[dataBlock:dataBlock]
	var d dotStuffer
	var n int64
	for {
		m, rerr := r.Read(in)
		n += int64(m)
		wire := d.append(out, in[:m])
		if rerr == io.EOF {
			wire = d.end(wire)
		}
		if len(wire) > 0 {
			b.SetWriteDeadline(time.Now().Add(backendTimeout))
			if _, err := b.Conn.Write(wire); err != nil {
				return n, backendWriteError{err}
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

// dotStuffer encodes a message for DATA (RFC 5321 §4.5.2) exactly as
// net/textproto's DotWriter does, which go-smtp's client used: a dot that
// starts a line is doubled, an LF not preceded by a CR becomes CRLF, and
// the end is CRLF (if the message does not end with one) and the final
// dot. Like DotWriter, it takes the second CR of "\r\r" for data, so an
// LF after an even run of CRs gets a CR of its own.
type dotStuffer struct {
	state int
}

const (
	dotStart     = iota // nothing written yet
	dotLineStart        // after LF
	dotCR               // after a CR that may end a line
	dotData             // within a line
)

// append appends p, encoded, to out.
func (d *dotStuffer) append(out, p []byte) []byte {
	for len(p) > 0 {
		if (d.state == dotStart || d.state == dotLineStart) && p[0] == '.' {
			out = append(out, '.')
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			out = append(out, p...)
			if d.crAfter(p) {
				d.state = dotCR
			} else {
				d.state = dotData
			}
			return out
		}
		out = append(out, p[:i]...)
		if !d.crAfter(p[:i]) {
			out = append(out, '\r')
		}
		out = append(out, '\n')
		d.state = dotLineStart
		p = p[i+1:]
	}
	return out
}

// crAfter says whether the state after p, which holds no LF, is dotCR:
// each CR of the run that ends p flips it, starting from d's state where
// the run is all of p and from "not after a CR" otherwise.
func (d *dotStuffer) crAfter(p []byte) bool {
	j := len(p)
	for j > 0 && p[j-1] == '\r' {
		j--
	}
	cr := j == 0 && d.state == dotCR
	if (len(p)-j)%2 == 1 {
		cr = !cr
	}
	return cr
}

// end appends the end of the message: CRLF where the last line lacks it,
// and the final dot.
func (d *dotStuffer) end(out []byte) []byte {
	switch d.state {
	case dotCR:
		out = append(out, '\n')
	case dotStart, dotData:
		out = append(out, '\r', '\n')
	}
	return append(out, '.', '\r', '\n')
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
