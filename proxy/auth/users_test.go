package auth

import (
	"errors"
	"strings"
	"testing"

	"mailproxy/protocols"
	"mailproxy/routing"
)

// lower is the routing key of username_case = "lower" with default_domain
// "example.org".
func lower(s string) string { return routing.Key(s, false, "example.org") }

func TestParseUsers(t *testing.T) {
	file := "# users of example.org\r\n" +
		"\n" +
		"   # an indented comment\n" +
		"alice:{PLAIN}pw1\n" +
		"Bob@Example.org:{PLAIN}pw2:1000:1000::/home/bob:/bin/false:userdb_mail=maildir:~/Maildir\r\n" +
		"carol@other.example:{PLAIN}pw:3::\n" +
		"dave:$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1\n"
	u, err := ParseUsers(strings.NewReader(file), "users", lower)
	if err != nil {
		t.Fatal(err)
	}
	if u.Len() != 4 {
		t.Errorf("Len = %d, want 4", u.Len())
	}
	for _, tt := range []struct {
		login, pw string
		want      error
	}{
		{"alice", "pw1", nil},
		{"ALICE@example.org", "pw1", nil},
		{"alice", "pw2", ErrWrongPassword},
		{"bob", "pw2", nil},
		{"bob@example.org", "pw2", nil},
		{"carol@other.example", "pw", nil},
		{"carol", "pw", ErrUnknownUser}, // carol@example.org
		{"dave", "Hello world!", nil},
		{"eve", "pw1", ErrUnknownUser},
		{"", "", ErrUnknownUser},
	} {
		if err := u.Verify(lower(tt.login), protocols.Password(tt.pw)); !errors.Is(err, tt.want) {
			t.Errorf("Verify(%q, %q) = %v, want %v", tt.login, tt.pw, err, tt.want)
		}
	}
}

// Every bad line is reported with its line number; nothing is loaded.
func TestParseUsersErrors(t *testing.T) {
	file := "alice:{PLAIN}pw\n" + // 1
		"# fine\n" + // 2
		"nocolon\n" + // 3
		":{PLAIN}pw\n" + // 4
		"bob:\n" + // 5
		"carol:{MD4}abc\n" + // 6
		"ALICE:{PLAIN}other\n" + // 7: alice again, once lower-cased
		"dave smith:{PLAIN}pw\n" + // 8
		"erin:{SSHA}!!!\n" // 9
	_, err := ParseUsers(strings.NewReader(file), "users.passwd", lower)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		"users.passwd:3: want user:{SCHEME}hash",
		"users.passwd:4: empty user name",
		`users.passwd:5: user "bob" has no password`,
		`users.passwd:6: user "carol": {MD4}: unknown scheme`,
		`users.passwd:7: user "ALICE" is already on line 1`,
		`users.passwd:8: user name "dave smith" has white space`,
		`users.passwd:9: user "erin": {SSHA}: bad hash: not base64`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if n := strings.Count(msg, "\n") + 1; n != 7 {
		t.Errorf("got %d problems, want 7:\n%s", n, msg)
	}
	var le *LineError
	if !errors.As(err, &le) || le.Line != 3 {
		t.Errorf("errors.As LineError: %+v", le)
	}
	if strings.Contains(msg, "other") {
		t.Errorf("a password is in the error: %s", msg)
	}
}

func TestParseUsersLongLine(t *testing.T) {
	_, err := ParseUsers(strings.NewReader("alice:{PLAIN}pw\nbob:{PLAIN}"+strings.Repeat("x", maxLine)+"\n"), "u", nil)
	if err == nil || !strings.Contains(err.Error(), "u:2:") {
		t.Errorf("got %v, want an error on line 2", err)
	}
}

// countingHash counts its checks.
type countingHash struct {
	pw    string
	calls *int
}

func (h countingHash) verify(p []byte) bool { *h.calls++; return string(p) == h.pw }

// A user who is not in the file is checked against the dummy hash, so
// that the answer costs as much as a wrong password.
func TestUnknownUserChecksDummy(t *testing.T) {
	var userCalls, dummyCalls int
	u := &Users{
		hashes: map[string]passwordHash{"alice": countingHash{"pw", &userCalls}},
		dummy:  countingHash{"pw", &dummyCalls},
	}
	if err := u.Verify("mallory", "pw"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("unknown user with the dummy's password: %v", err)
	}
	if dummyCalls != 1 || userCalls != 0 {
		t.Errorf("unknown user: %d dummy and %d user checks, want 1 and 0", dummyCalls, userCalls)
	}
	if err := u.Verify("alice", "nope"); !errors.Is(err, ErrWrongPassword) || userCalls != 1 || dummyCalls != 1 {
		t.Errorf("wrong password: %v, %d user and %d dummy checks", err, userCalls, dummyCalls)
	}
}

// The dummy is of the kind most users have: an unknown user then takes as
// long as most wrong passwords.
func TestDummyIsMostCommonKind(t *testing.T) {
	file := "a:{PLAIN}x\n" +
		"b:{BLF-CRYPT}$2y$05$pNJUtoO7xWqVhX9DX1i6SO6y3M59a9nnE6C0xswIooTkTlBmWa/d.\n" +
		"c:{BLF-CRYPT}$2y$04$WvEHAQ22LfnibWQAweteE.A5uyRecx4ZfMV8gavSXR3hX5jVoazNa\n" +
		"d:{CRYPT}$2y$05$jOMg9mAPsJaM/NbmIxxrBuXIo.tcHdsm6nqzfDb7H3A0Lp3k0tCxa\n" +
		"e:{SSHA}QfCNDSWhQKmsLGPCHWtmGVc1F5/RfLlh\n"
	u, err := ParseUsers(strings.NewReader(file), "u", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := kind(u.dummy); got != "$2y$05$" {
		t.Errorf("dummy kind %q, want $2y$05$ (two users have it)", got)
	}
	if empty, _ := ParseUsers(strings.NewReader("# nobody\n"), "u", nil); empty.Verify("a", "x") != ErrUnknownUser {
		t.Error("empty file")
	}
}
