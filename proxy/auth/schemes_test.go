package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// dovecotFixtures were made with `doveadm pw -s SCHEME -p pw` (Dovecot
// 2.3.19), once, and pasted here: the strings a real Dovecot users file
// holds.
var dovecotFixtures = []string{
	"{PLAIN}pw",
	"{SHA512-CRYPT}$6$H5VMapWUIKZBkMX/$ZMox.8RtkIbr0uEu2/6dAte9IuYX5FmLPQN/yESxJS9QZhxIe6SEeqTuixRospWZufi/Qk9YsR7F4.IBhzZ6v/",
	"{SHA512-CRYPT}$6$rounds=10000$d79D1pLmjCXzbNh0$4ABwX7oXc1.v2/DpcGWrvaIGvrWVthQVa0gOZfTmiKSee7K9UrX6VcRJp.AkG3pfZ8meRRvanFIFdYzaZAisv0",
	"{SHA256-CRYPT}$5$38UlFd8blbaWe/Aj$WBGhS8rvni8/9U1RZgVdc4NWoI.yfnGPM63l1QNc4eC",
	"{BLF-CRYPT}$2y$05$pNJUtoO7xWqVhX9DX1i6SO6y3M59a9nnE6C0xswIooTkTlBmWa/d.",
	"{BLF-CRYPT}$2y$04$WvEHAQ22LfnibWQAweteE.A5uyRecx4ZfMV8gavSXR3hX5jVoazNa",
	"{CRYPT}$2y$05$jOMg9mAPsJaM/NbmIxxrBuXIo.tcHdsm6nqzfDb7H3A0Lp3k0tCxa",
	"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$3S27u71u0XNDcC5f6oZlfA$n5KWru1O0gkibZKtVmaXX+lQj0R03REF9jtkJfsNgR8",
	"{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$AalRpK/RwHiHEp4iLXw6mQ$H1m16r1NBQPVFYCUzUV+ZrhJ4l2/sdnmqjWsJmWAYTE",
	"{SSHA}QfCNDSWhQKmsLGPCHWtmGVc1F5/RfLlh",
	"{SSHA256}b0OJ+rqqdyqvhLDs3N1ZvEy/dLgaJ1zLJoXQAV1BUP1UVAYO",
	"{SSHA512}T/5vpPn/YZZ0SzAX5vNzhBoX2wGxqJ0S08BX3gFxlZyWDwxJ39Uv3W+8Is2W9Q+1WaJ7JkWpnzP7gF0LjVvdvSHuPJc=",
	"{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=",
	"{SHA256}MMlS+rEiw/l1nwKm2Vw3WLJGtP7iOZV7LU/uRuJhcMQ=",
	"{SHA512}vhloOHNt39AAfdiy6PRvItRA1MWVmSXLSRNavJzbAehJYapD3Q3bbuWZdetkkoDZ9ECIhArzdFGCimQSubV0/A==",
	// No {SCHEME}: Dovecot's default, CRYPT.
	"$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
}

func TestDovecotFixtures(t *testing.T) {
	for _, f := range dovecotFixtures {
		pw := "pw"
		if !strings.HasPrefix(f, "{") {
			pw = "Hello world!"
		}
		t.Run(f[:min(len(f), 24)], func(t *testing.T) {
			checkHash(t, f, pw)
		})
	}
}

// checkHash parses field and checks that pw matches and near misses do not.
func checkHash(t *testing.T, field, pw string) {
	t.Helper()
	h, err := parseHash(field)
	if err != nil {
		t.Fatalf("parseHash(%q): %v", field, err)
	}
	if !h.verify([]byte(pw)) {
		t.Errorf("%q: the right password %q is refused", field, pw)
	}
	for _, wrong := range []string{"", pw + "x", strings.ToUpper(pw), pw[:len(pw)-1]} {
		if h.verify([]byte(wrong)) {
			t.Errorf("%q: the wrong password %q is accepted", field, wrong)
		}
	}
}

// Hashes made here with the libraries, with salts and costs of our own.
func TestGeneratedHashes(t *testing.T) {
	const pw = "correct horse battery staple ü"
	salt := make([]byte, 16)
	rand.Read(salt)
	b64 := base64.StdEncoding.EncodeToString
	phc := base64.RawStdEncoding.EncodeToString

	bc, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	ssha256 := sha256.Sum256(append([]byte(pw), salt...))
	ssha512 := sha512.Sum512(append([]byte(pw), salt[:8]...))
	sha := sha256.Sum256([]byte(pw))
	sc, err := shaCrypt(pw, "$6$rounds=1000$"+b64(salt)[:16])
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{
		"{PLAIN}" + pw,
		"{CLEARTEXT}" + pw,
		"{plain}" + pw, // scheme names are case-insensitive, as in Dovecot
		"{BLF-CRYPT}" + string(bc),
		"{CRYPT}" + string(bc),
		string(bc),
		"{SHA512-CRYPT}" + sc,
		"{CRYPT}" + sc,
		fmt.Sprintf("{ARGON2ID}$argon2id$v=19$m=64,t=1,p=2$%s$%s", phc(salt), phc(argon2.IDKey([]byte(pw), salt, 1, 64, 2, 32))),
		fmt.Sprintf("{ARGON2I}$argon2i$v=19$m=32,t=2,p=1$%s$%s", phc(salt), phc(argon2.Key([]byte(pw), salt, 2, 32, 1, 16))),
		"{SSHA256}" + b64(append(ssha256[:], salt...)),
		"{SSHA512}" + b64(append(ssha512[:], salt[:8]...)),
		"{SHA256}" + b64(sha[:]),
	} {
		t.Run(field[:min(len(field), 16)], func(t *testing.T) { checkHash(t, field, pw) })
	}
}

func TestBadHashes(t *testing.T) {
	for _, tt := range []struct{ field, msg string }{
		{"{MD4}abc", "unknown scheme"},
		{"{MD5-CRYPT}$1$hqucP.hg$k619ik0k04NNVPElpoJbA.", "unknown scheme"},
		{"{CRYPT}$1$hqucP.hg$k619ik0k04NNVPElpoJbA.", "not DES or MD5-crypt"},
		{"{CRYPT}abJnggxhB/yWI", "not DES or MD5-crypt"},
		{"abJnggxhB/yWI", "not DES or MD5-crypt"},
		{"{PLAIN", "no closing }"},
		{"{SHA512-CRYPT}$5$38UlFd8blbaWe/Aj$WBGhS8rvni8/9U1RZgVdc4NWoI.yfnGPM63l1QNc4eC", "want a $6$ string"},
		{"{BLF-CRYPT}$2y$05$short", "not a bcrypt string"},
		{"{BLF-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1", "not a bcrypt string"},
		{"{SSHA}!!!", "not base64"},
		{"{SSHA}" + base64.StdEncoding.EncodeToString(make([]byte, 20)), "want a 20-byte digest and a salt"},
		{"{SHA256}" + base64.StdEncoding.EncodeToString(make([]byte, 31)), "want a 32-byte digest"},
		{"{ARGON2ID}$argon2i$v=19$m=32,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "want $argon2id$"},
		{"{ARGON2ID}$argon2id$v=16$m=32,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "only v=19"},
		{"{ARGON2ID}$argon2id$v=19$m=32,t=2$c2FsdHNhbHQ$aGFzaGhhc2g", "want m=, t= and p="},
		{"{ARGON2ID}$argon2id$v=19$m=32,t=0,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "t=0"},
		{"{ARGON2ID}$argon2id$v=19$m=4,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "m=4"},
		{"{ARGON2ID}$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "m=99999999"},
		{"{ARGON2ID}$argon2id$v=19$m=32,t=1,p=0$c2FsdHNhbHQ$aGFzaGhhc2g", "p=0"},
		{"{ARGON2ID}$argon2id$v=19$m=32,t=1,p=1,x=2$c2FsdHNhbHQ$aGFzaGhhc2g", "unknown parameter"},
		{"{ARGON2ID}$argon2id$v=19$m=32,t=1,p=1$c2Fs$aGFzaGhhc2g", "at least 8"},
	} {
		_, err := parseHash(tt.field)
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("parseHash(%q) = %v, want an error with %q", tt.field, err, tt.msg)
		}
	}
}
