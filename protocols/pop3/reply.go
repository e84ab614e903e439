package pop3

import (
	"context"
	"errors"
	"strings"
)

// replyError ends a command with an -ERR line, as go-smtp's SMTPError
// does for SMTP. Its text is what the client sees, generic; the cause goes
// to the log where the error is made. answer maps it to the wire, in one
// place.
type replyError struct {
	line string    // the whole reply, "-ERR ..."
	kind replyKind // how it counts
	end  error     // not nil: the session ends after the reply, with this error
}

type replyKind int

const (
	replyPlain    replyKind = iota // not the client's doing: not counted
	replyBad                       // a command the client may not send: counts towards maxErrors
	replyRejected                  // a failed login: after the failure delay, counts
)

func (e *replyError) Error() string { return e.line }

// bad is -ERR msg for a command the client may not send now.
func bad(msg string) error { return &replyError{line: "-ERR " + msg, kind: replyBad} }

// rejected is a failed login's reply line (ours or the backend's).
func rejected(line string) error { return &replyError{line: line, kind: replyRejected} }

// refused is replyRefused: the auth penalty turned the login away.
func refused() error { return &replyError{line: replyRefused} }

// unavailable is replyUnavailable; with end set the session ends after it.
func unavailable(end error) error { return &replyError{line: replyUnavailable, end: end} }

// answer writes the reply of a command that ended with err: a replyError
// as its line, counted as its kind says; nothing for nil. Any other error
// is returned: it ends the session.
func (f *front) answer(ctx context.Context, err error) error {
	var re *replyError
	if err == nil || !errors.As(err, &re) {
		return err
	}
	switch re.kind {
	case replyBad:
		err = f.bad(strings.TrimPrefix(re.line, "-ERR "))
	case replyRejected:
		err = f.rejected(ctx, re.line)
	default:
		err = f.reply("%s", re.line)
	}
	if err == nil {
		err = re.end
	}
	return err
}
