package imap

import "errors"

// replyError ends a command with a tagged NO or BAD, as go-imap's
// imap.Error does. Its text is what the client sees, generic; the cause
// goes to the log where the error is made. answer maps it to the wire, in
// one place.
type replyError struct {
	line string // the reply after the tag: "NO [UNAVAILABLE] ...", "BAD ..."
	bad  bool   // the client's mistake: counts towards maxErrors
}

func (e *replyError) Error() string { return e.line }

// no is a NO reply with text (a response code first, when there is one).
func no(text string) error { return &replyError{line: "NO " + text} }

// bad is a BAD reply: the command was not one the client may send.
func bad(text string) error { return &replyError{line: "BAD " + text, bad: true} }

// relayed is a backend's own reply to a login, passed on as it is.
func relayed(line string) error { return &replyError{line: line} }

// The replies of more than one place.
var (
	errPrivacyRequired = no("[PRIVACYREQUIRED] Use STARTTLS first.")
	errCredentials     = no("[AUTHENTICATIONFAILED] Invalid credentials.")
	errUnavailable     = no("[UNAVAILABLE] Server unavailable, try again later.")
)

// answer writes the reply of a command that ended with err: a replyError
// as its tagged line (a BAD through f.bad, which counts it), nothing for
// nil. Any other error is returned: it ends the session.
func (f *front) answer(tag string, err error) error {
	var re *replyError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &re):
		return err
	case re.bad:
		return f.bad(tag, re.line[len("BAD "):])
	}
	return f.reply("%s %s", tag, re.line)
}
