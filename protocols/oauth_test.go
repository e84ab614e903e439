package protocols

import (
	"errors"
	"strings"
	"testing"
)

func TestParseOAuth(t *testing.T) {
	tests := []struct {
		mech, msg string
		user      string
		err       error
	}{
		{"OAUTHBEARER", "n,a=alice@example.org,\x01host=imap.example.org\x01port=993\x01auth=Bearer vF9dft4qmT\x01\x01", "alice@example.org", nil},
		{"oauthbearer", "y,a=a=2Cb=3Dc,\x01auth=bearer t\x01\x01", "a,b=c", nil},
		{"OAUTHBEARER", "n,,\x01auth=Bearer t\x01\x01", "", ErrOAuthNoUser},
		{"OAUTHBEARER", "p=tls-unique,a=alice,\x01auth=Bearer t\x01\x01", "", ErrOAuthSyntax},
		{"OAUTHBEARER", "n,a=alice,\x01host=x\x01\x01", "", ErrOAuthSyntax},              // no auth
		{"OAUTHBEARER", "n,a=alice,\x01auth=Basic dXNlcg==\x01\x01", "", ErrOAuthSyntax}, // not Bearer
		{"OAUTHBEARER", "n,a=alice,\x01auth=Bearer t\x01", "", ErrOAuthSyntax},           // one ^A
		{"OAUTHBEARER", "n,a=alice,auth=Bearer t\x01\x01", "", ErrOAuthSyntax},           // no kvsep
		{"OAUTHBEARER", "n,a=al ice,\x01auth=Bearer t\x01\x01", "", ErrOAuthSyntax},
		{"OAUTHBEARER", "n,a=a=2,\x01auth=Bearer t\x01\x01", "", ErrOAuthSyntax},
		{"OAUTHBEARER", "n,u=alice,\x01auth=Bearer t\x01\x01", "", ErrOAuthSyntax},
		{"OAUTHBEARER", "", "", ErrOAuthSyntax},
		{"OAUTHBEARER", "\x01", "", ErrOAuthSyntax}, // the dummy reply is never a first message
		{"XOAUTH2", "user=bob@example.org\x01auth=Bearer ya29.vF9dft4qmT\x01\x01", "bob@example.org", nil},
		{"XOAUTH2", "user=\x01auth=Bearer t\x01\x01", "", ErrOAuthSyntax},
		{"XOAUTH2", "user=bob\x01auth=Bearer \x01\x01", "", ErrOAuthSyntax},
		{"XOAUTH2", "user=bob\x01auth=Bearer t\x01", "", ErrOAuthSyntax},
		{"XOAUTH2", "user=bob\r\nA1 LOGOUT\x01auth=Bearer t\x01\x01", "", ErrOAuthSyntax},
		{"XOAUTH2", "bob\x01auth=Bearer t\x01\x01", "", ErrOAuthSyntax},
		{"PLAIN", "\x00bob\x00pw", "", ErrUnknownMechanism},
	}
	for _, tt := range tests {
		user, err := ParseOAuth(tt.mech, []byte(tt.msg))
		if user != tt.user || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
			t.Errorf("ParseOAuth(%s, %q) = %q, %v; want %q, %v", tt.mech, tt.msg, user, err, tt.user, tt.err)
		}
	}
}

func TestIsPassthrough(t *testing.T) {
	for mech, want := range map[string]bool{"oauthbearer": true, "XOAUTH2": true, "PLAIN": false, "": false} {
		if IsPassthrough(mech) != want {
			t.Errorf("IsPassthrough(%q) = %v", mech, !want)
		}
	}
}

// FuzzParseOAuth: any client bytes give a user or a typed error, never a
// panic, and a user that is returned is safe to route and to put on a
// protocol line.
func FuzzParseOAuth(f *testing.F) {
	f.Add("OAUTHBEARER", []byte("n,a=alice@example.org,\x01host=imap.example.org\x01port=993\x01auth=Bearer vF9dft4qmT\x01\x01"))
	f.Add("OAUTHBEARER", []byte("n,a=a=2Cb,\x01auth=Bearer t\x01\x01"))
	f.Add("OAUTHBEARER", []byte("y,,\x01auth=Bearer t\x01\x01"))
	f.Add("XOAUTH2", []byte("user=bob@example.org\x01auth=Bearer ya29.vF9dft4qmT\x01\x01"))
	f.Add("XOAUTH2", []byte("\x01"))
	f.Fuzz(func(t *testing.T, mech string, msg []byte) {
		user, err := ParseOAuth(mech, msg)
		if err != nil {
			if user != "" {
				t.Fatalf("user %q with error %v", user, err)
			}
			if !errors.Is(err, ErrOAuthSyntax) && !errors.Is(err, ErrOAuthNoUser) && !errors.Is(err, ErrUnknownMechanism) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if !validUser(user) || strings.ContainsAny(user, "\r\n\x00 ") {
			t.Fatalf("unsafe user %q from %q", user, msg)
		}
	})
}
