package auth

import (
	"strings"
	"testing"
)

// The test vectors of "Unix crypt using SHA-256 and SHA-512" (Drepper),
// and a few more edge cases, checked against libxcrypt's crypt(3).
var shaCryptVectors = []struct{ setting, password, want string }{
	{"$5$saltstring", "Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"},
	{"$5$rounds=10000$saltstringsaltstring", "Hello world!", "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"},
	{"$5$rounds=5000$toolongsaltstring", "This is just a test", "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"},
	{"$5$rounds=1400$anotherlongsaltstring", "a very much longer text to encrypt.  This one even stretches over morethan one line.", "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1"},
	{"$5$rounds=77777$short", "we have a short salt string but not a short password", "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/"},
	{"$5$rounds=123456$asaltof16chars..", "a short string", "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD"},
	{"$5$rounds=10$roundstoolow", "the minimum number is still observed", "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"},
	{"$6$saltstring", "Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
	{"$6$rounds=10000$saltstringsaltstring", "Hello world!", "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."},
	{"$6$rounds=5000$toolongsaltstring", "This is just a test", "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"},
	{"$6$rounds=1400$anotherlongsaltstring", "a very much longer text to encrypt.  This one even stretches over morethan one line.", "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"},
	{"$6$rounds=77777$short", "we have a short salt string but not a short password", "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0"},
	{"$6$rounds=123456$asaltof16chars..", "a short string", "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1"},
	{"$6$rounds=10$roundstoolow", "the minimum number is still observed", "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."},
	{"$6$", "empty salt", "$6$$8Lsf87AQZ1a0HU6lp/qX8euzqgc0OEibupjG89HgWva7WvuXWWbyivEFHyO8xmUeWfG5WzHeGoZq5RZR2dnIB1"},
	{"$5$x", "a password longer than sixty-four bytes, which is the block size of sha-256 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "$5$x$0Afg8u1jrk5xtvBcx5CoXmWrL7dXN2TJAbfJIWAWoD4"},
	{"$6$y", "", "$6$y$yNWtZ.6jK48k4qCsR4ytB0LJf1HPHcmkibhZk33GJNhn8jHKoPXs1lc8VSk4XhaSmdKdrXd49ad7TzqJY.SlX/"},
}

func TestShaCryptVectors(t *testing.T) {
	for _, v := range shaCryptVectors {
		if testing.Short() && strings.Contains(v.setting, "123456") {
			continue
		}
		got, err := shaCrypt(v.password, v.setting)
		if err != nil || got != v.want {
			t.Errorf("crypt(%q, %q) = %q, %v; want %q", v.password, v.setting, got, err, v.want)
			continue
		}
		h, err := parseShaCrypt(v.want)
		if err != nil {
			t.Errorf("parse %q: %v", v.want, err)
			continue
		}
		if !h.verify([]byte(v.password)) || h.verify([]byte(v.password+"x")) {
			t.Errorf("verify %q: right password refused or wrong one accepted", v.want)
		}
	}
}

func TestShaCryptParseErrors(t *testing.T) {
	good := "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
	for _, s := range []string{
		"",
		"$1$salt$hash",
		"$6$saltstring",                          // no hash
		"$6$saltstring$short",                    // hash too short
		good + "x",                               // too long
		strings.Replace(good, "svn8", "sv!8", 1), // not crypt base64
		"$6$rounds=$salt$" + good[len("$6$saltstring$"):],
		"$6$rounds=-5$salt$" + good[len("$6$saltstring$"):],
		"$6$rounds=10$salt$" + good[len("$6$saltstring$"):],    // glibc writes rounds=1000
		"$6$toolongsaltstring$" + good[len("$6$saltstring$"):], // glibc cuts the salt at 16
		"$5$saltstring$" + good[len("$6$saltstring$"):],        // a $6$ length under $5$
	} {
		if _, err := parseShaCrypt(s); err == nil {
			t.Errorf("parseShaCrypt(%q) accepted it", s)
		}
	}
}
