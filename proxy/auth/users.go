package auth

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode"

	"mailproxy/protocols"
)

// maxLine bounds one line of a users file (an argon2 line is ~120 bytes).
const maxLine = 64 << 10

// Users is a parsed users file: routing key -> password hash. It is
// immutable; a reload parses a new one.
type Users struct {
	hashes map[string]passwordHash
	// dummy is checked for a user who is not in the file, so that the
	// answer takes as long as a wrong password of a user who is: it is
	// the first hash of the file's most common kind (scheme and cost).
	dummy passwordHash
}

// LineError is one bad line of a users file.
type LineError struct {
	File string
	Line int // 1-based
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// LoadUsers reads and parses the users file at path; see ParseUsers.
func LoadUsers(path string, normalize func(string) string) (*Users, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	return ParseUsers(bytes.NewReader(b), path, normalize)
}

// ParseUsers parses a users file in Dovecot's passwd-file format:
//
//	# comment
//	user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]
//
// Only the first two fields are used. A hash without {SCHEME} is read as
// CRYPT. name is the file name for messages. normalize turns a user name
// into its routing key (nil: unchanged), so that the file matches logins as
// routing does. Every bad line (unknown scheme, malformed hash, duplicate
// user) is reported, as *LineError values joined into one error.
func ParseUsers(r io.Reader, name string, normalize func(string) string) (*Users, error) {
	if normalize == nil {
		normalize = func(s string) string { return s }
	}
	u := &Users{hashes: map[string]passwordHash{}}
	first := map[string]int{} // routing key -> line
	kinds := map[string]int{} // kind -> count
	var errs []error
	var dummyKind string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	n := 0
	for sc.Scan() {
		n++
		user, h, err := parseLine(sc.Text())
		if err == nil && user != "" {
			key := normalize(user)
			if l, dup := first[key]; dup {
				err = fmt.Errorf("user %q is already on line %d", user, l)
			} else {
				first[key], u.hashes[key] = n, h
				k := kind(h)
				if kinds[k]++; kinds[k] > kinds[dummyKind] {
					dummyKind, u.dummy = k, h
				}
			}
		}
		if err != nil {
			errs = append(errs, &LineError{File: name, Line: n, Err: err})
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, &LineError{File: name, Line: n + 1, Err: err})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return u, nil
}

// parseLine parses one line; a blank line or comment gives "".
func parseLine(line string) (user string, h passwordHash, err error) {
	line = strings.TrimSuffix(line, "\r")
	if t := strings.TrimSpace(line); t == "" || t[0] == '#' {
		return "", nil, nil
	}
	user, rest, ok := strings.Cut(line, ":")
	pw, _, _ := strings.Cut(rest, ":")
	switch {
	case !ok:
		return "", nil, errors.New("want user:{SCHEME}hash")
	case user == "":
		return "", nil, errors.New("empty user name")
	case strings.ContainsFunc(user, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return "", nil, fmt.Errorf("user name %q has white space or control characters", user)
	case pw == "":
		return "", nil, fmt.Errorf("user %q has no password (leave out users who may not log in)", user)
	}
	if h, err = parseHash(pw); err != nil {
		return "", nil, fmt.Errorf("user %q: %w", user, err)
	}
	return user, h, nil
}

// kind is a hash's scheme and cost: hashes of one kind take as long to
// check.
func kind(h passwordHash) string {
	switch h := h.(type) {
	case *shaCryptHash:
		return fmt.Sprintf("%s rounds=%d", h.v.prefix, h.rounds)
	case bcryptHash:
		return string(h[:min(len(h), 7)]) // "$2y$10$"
	case *argon2Hash:
		return fmt.Sprintf("argon2 id=%v m=%d t=%d p=%d", h.id, h.m, h.t, h.p)
	}
	return fmt.Sprintf("%T", h)
}

// Len is the number of users.
func (u *Users) Len() int { return len(u.hashes) }

// Verify checks password for the user whose routing key is key. A user
// not in the file costs as much as a wrong password (see dummy).
func (u *Users) Verify(key string, password protocols.Password) error {
	h, ok := u.hashes[key]
	if !ok {
		if u.dummy != nil {
			u.dummy.verify([]byte(password))
		}
		return ErrUnknownUser
	}
	if !h.verify([]byte(password)) {
		return ErrWrongPassword
	}
	return nil
}
