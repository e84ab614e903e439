package auth

import (
	"strings"
	"testing"
)

// FuzzParseLine: any line either parses to a user and a hash, is blank or
// a comment, or is an error; it never panics, and a parsed line loads as
// a file of one line. Parsing computes no hash, so no cost matters.
func FuzzParseLine(f *testing.F) {
	for _, s := range dovecotFixtures {
		f.Add("alice:" + s + ":1000:1000::/home/alice::")
	}
	for _, s := range []string{"", "# x", "a:", ":b", "a:{", "a:{}", "a:{PLAIN}", "a b:{PLAIN}x", "a:{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$$", "a:$6$rounds=99999999999999999999$x$"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		user, h, err := parseLine(line)
		switch {
		case err != nil:
			if user != "" || h != nil {
				t.Fatalf("error %v with a result", err)
			}
			return
		case user == "":
			if h != nil {
				t.Fatal("hash without a user")
			}
			return
		case h == nil || strings.Contains(user, ":"):
			t.Fatalf("bad result %q %v", user, h)
		}
		if strings.ContainsAny(line, "\n") {
			return
		}
		u, err := ParseUsers(strings.NewReader(line), "f", nil)
		if err != nil || u.Len() != 1 {
			t.Fatalf("parsed line does not load: %v", err)
		}
	})
}
