package auth

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// A password hash of the users file, parsed and checked when the file is
// loaded so that a login never meets a malformed one.
type passwordHash interface {
	// verify reports whether password is the one hashed, comparing in
	// constant time.
	verify(password []byte) bool
}

// Schemes lists the password schemes a users file may use, with
// Dovecot's names (doveadm pw -s NAME writes them).
var Schemes = []string{
	"PLAIN", "CLEAR", "CLEARTEXT",
	"CRYPT", "SHA256-CRYPT", "SHA512-CRYPT", "BLF-CRYPT",
	"ARGON2I", "ARGON2ID",
	"SHA", "SHA1", "SHA256", "SHA512",
	"SSHA", "SSHA256", "SSHA512",
}

// errScheme is a hash that its scheme does not accept.
var errScheme = errors.New("bad hash")

// parseHash reads the password field of a users file line:
// "{SCHEME}hash", or a bare crypt(3) string, which Dovecot reads as CRYPT.
func parseHash(field string) (passwordHash, error) {
	scheme, h := "CRYPT", field
	if rest, ok := strings.CutPrefix(field, "{"); ok {
		s, after, ok := strings.Cut(rest, "}")
		if !ok {
			return nil, fmt.Errorf("%w: %q has no closing }", errScheme, field[:min(len(field), 20)])
		}
		scheme, h = strings.ToUpper(s), after
	}
	ph, err := parseSchemeHash(scheme, h)
	if err != nil {
		return nil, fmt.Errorf("{%s}: %w", scheme, err)
	}
	return ph, nil
}

func parseSchemeHash(scheme, h string) (passwordHash, error) {
	switch scheme {
	case "PLAIN", "CLEAR", "CLEARTEXT":
		return newPlain(h), nil
	case "CRYPT":
		return parseCrypt(h)
	case "SHA256-CRYPT", "SHA512-CRYPT":
		if want := map[string]string{"SHA256-CRYPT": "$5$", "SHA512-CRYPT": "$6$"}[scheme]; !strings.HasPrefix(h, want) {
			return nil, fmt.Errorf("%w: want a %s string", errScheme, want)
		}
		return parseShaCrypt(h)
	case "BLF-CRYPT":
		return parseBcrypt(h)
	case "ARGON2I", "ARGON2ID":
		return parseArgon2(strings.ToLower(scheme), h)
	case "SHA", "SHA1":
		return parseSalted(sha1.New, h, false)
	case "SHA256":
		return parseSalted(sha256.New, h, false)
	case "SHA512":
		return parseSalted(sha512.New, h, false)
	case "SSHA":
		return parseSalted(sha1.New, h, true)
	case "SSHA256":
		return parseSalted(sha256.New, h, true)
	case "SSHA512":
		return parseSalted(sha512.New, h, true)
	}
	return nil, fmt.Errorf("unknown scheme (known: %s)", strings.Join(Schemes, ", "))
}

// parseCrypt is Dovecot's CRYPT: whatever crypt(3) reads, of which the
// strings worth keeping: bcrypt and sha-crypt. DES and MD5-crypt are
// refused; rehash those users with BLF-CRYPT or SHA512-CRYPT.
func parseCrypt(h string) (passwordHash, error) {
	switch {
	case strings.HasPrefix(h, "$5$"), strings.HasPrefix(h, "$6$"):
		return parseShaCrypt(h)
	case strings.HasPrefix(h, "$2"):
		return parseBcrypt(h)
	}
	return nil, fmt.Errorf("%w: only $2a$/$2b$/$2y$ (bcrypt), $5$ and $6$ (sha-crypt) crypt strings are supported, not DES or MD5-crypt", errScheme)
}

// plainHash keeps a digest of the plain password, so that the comparison
// takes the same time whatever the lengths.
type plainHash [sha256.Size]byte

func newPlain(pw string) *plainHash {
	h := plainHash(sha256.Sum256([]byte(pw)))
	return &h
}

func (h *plainHash) verify(password []byte) bool {
	sum := sha256.Sum256(password)
	return subtle.ConstantTimeCompare(sum[:], h[:]) == 1
}

// bcryptHash is a "$2?$cost$..." string (Dovecot's BLF-CRYPT).
type bcryptHash []byte

func parseBcrypt(h string) (passwordHash, error) {
	if _, err := bcrypt.Cost([]byte(h)); err != nil || !strings.HasPrefix(h, "$2") {
		return nil, fmt.Errorf("%w: not a bcrypt string", errScheme)
	}
	return bcryptHash(h), nil
}

func (h bcryptHash) verify(password []byte) bool {
	// Like every bcrypt, only the first 72 bytes of password count.
	return bcrypt.CompareHashAndPassword(h, password) == nil
}

// saltedHash is base64(digest(password + salt) + salt), Dovecot's SSHA,
// SSHA256 and SSHA512; with salted false the digest alone (SHA, ...).
type saltedHash struct {
	new    func() hash.Hash
	digest []byte
	salt   []byte
}

func parseSalted(newHash func() hash.Hash, h string, salted bool) (passwordHash, error) {
	raw, err := base64.StdEncoding.DecodeString(h)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64", errScheme)
	}
	size := newHash().Size()
	switch {
	case salted && len(raw) <= size:
		return nil, fmt.Errorf("%w: %d bytes, want a %d-byte digest and a salt", errScheme, len(raw), size)
	case !salted && len(raw) != size:
		return nil, fmt.Errorf("%w: %d bytes, want a %d-byte digest", errScheme, len(raw), size)
	}
	return &saltedHash{new: newHash, digest: raw[:size], salt: raw[size:]}, nil
}

func (h *saltedHash) verify(password []byte) bool {
	d := h.new()
	d.Write(password)
	d.Write(h.salt)
	return subtle.ConstantTimeCompare(d.Sum(nil), h.digest) == 1
}

// argon2Hash is a PHC string "$argon2id$v=19$m=65536,t=3,p=1$salt$hash"
// (Dovecot's ARGON2I and ARGON2ID, from libsodium).
type argon2Hash struct {
	id   bool
	m, t uint32
	p    uint8
	salt []byte
	key  []byte
}

// maxArgon2Memory bounds m (KiB): each verification allocates it.
const maxArgon2Memory = 4 << 20 // 4 GiB

func parseArgon2(variant, h string) (passwordHash, error) {
	parts := strings.Split(h, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != variant {
		return nil, fmt.Errorf("%w: want $%s$v=19$m=M,t=T,p=P$salt$hash", errScheme, variant)
	}
	if parts[2] != "v=19" {
		return nil, fmt.Errorf("%w: version %q, only v=19 (1.3) is supported", errScheme, parts[2])
	}
	a := &argon2Hash{id: variant == "argon2id"}
	var seen int
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: bad parameter %q", errScheme, kv)
		}
		switch k {
		case "m":
			a.m, seen = uint32(n), seen|1
		case "t":
			a.t, seen = uint32(n), seen|2
		case "p":
			if n == 0 || n > 255 {
				return nil, fmt.Errorf("%w: p=%d, want 1 to 255", errScheme, n)
			}
			a.p, seen = uint8(n), seen|4
		default:
			return nil, fmt.Errorf("%w: unknown parameter %q", errScheme, kv)
		}
	}
	switch {
	case seen != 7:
		return nil, fmt.Errorf("%w: want m=, t= and p=", errScheme)
	case a.t < 1:
		return nil, fmt.Errorf("%w: t=0", errScheme)
	case a.m < 8*uint32(a.p) || a.m > maxArgon2Memory:
		return nil, fmt.Errorf("%w: m=%d, want %d to %d KiB", errScheme, a.m, 8*uint32(a.p), maxArgon2Memory)
	}
	var err1, err2 error
	a.salt, err1 = phcBase64(parts[4])
	a.key, err2 = phcBase64(parts[5])
	if err1 != nil || err2 != nil || len(a.salt) < 8 || len(a.key) < 4 {
		return nil, fmt.Errorf("%w: salt or hash is not base64 of at least 8 and 4 bytes", errScheme)
	}
	return a, nil
}

// phcBase64 decodes the PHC string format's base64, which has no padding.
func phcBase64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

func (a *argon2Hash) verify(password []byte) bool {
	var key []byte
	if a.id {
		key = argon2.IDKey(password, a.salt, a.t, a.m, a.p, uint32(len(a.key)))
	} else {
		key = argon2.Key(password, a.salt, a.t, a.m, a.p, uint32(len(a.key)))
	}
	return subtle.ConstantTimeCompare(key, a.key) == 1
}
