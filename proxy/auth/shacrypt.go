package auth

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// sha-crypt is glibc's SHA-256 and SHA-512 crypt ("$5$" and "$6$"), as
// Ulrich Drepper's specification "Unix crypt using SHA-256 and SHA-512"
// defines it; Dovecot's SHA256-CRYPT and SHA512-CRYPT are these strings.
// No library that the project can use has it, and it is short.
const (
	shaCryptDefaultRounds = 5000
	shaCryptMinRounds     = 1000
	shaCryptMaxRounds     = 999_999_999
	shaCryptMaxSalt       = 16
)

// shaCryptVariant is one of the two hash functions with its output order.
type shaCryptVariant struct {
	prefix string
	new    func() hash.Hash
	order  [][3]int // the digest bytes each 4-character group encodes
	tail   []int    // the last bytes, in fewer characters
}

var (
	shaCrypt256 = &shaCryptVariant{prefix: "$5$", new: sha256.New,
		order: [][3]int{{0, 10, 20}, {21, 1, 11}, {12, 22, 2}, {3, 13, 23}, {24, 4, 14},
			{15, 25, 5}, {6, 16, 26}, {27, 7, 17}, {18, 28, 8}, {9, 19, 29}},
		tail: []int{31, 30}}
	shaCrypt512 = &shaCryptVariant{prefix: "$6$", new: sha512.New,
		order: [][3]int{{0, 21, 42}, {22, 43, 1}, {44, 2, 23}, {3, 24, 45}, {25, 46, 4},
			{47, 5, 26}, {6, 27, 48}, {28, 49, 7}, {50, 8, 29}, {9, 30, 51}, {31, 52, 10},
			{53, 11, 32}, {12, 33, 54}, {34, 55, 13}, {56, 14, 35}, {15, 36, 57}, {37, 58, 16},
			{59, 17, 38}, {18, 39, 60}, {40, 61, 19}, {62, 20, 41}},
		tail: []int{63}}
)

// shaCryptHash is a parsed "$5$" or "$6$" string.
type shaCryptHash struct {
	v         *shaCryptVariant
	rounds    int
	salt      string
	setting   string // "$6$rounds=N$salt" or "$6$salt"
	encrypted string // the whole stored string
}

var errShaCrypt = errors.New("not a sha-crypt string")

// parseShaCryptSetting reads "$5$[rounds=N$]salt[$...]" (or "$6$...") as
// glibc's crypt does: the salt ends at "$" or after 16 characters, rounds
// are clamped to [1000, 999999999]. The setting returned is the canonical
// one that the result of crypt starts with.
func parseShaCryptSetting(s string) (*shaCryptHash, error) {
	var v *shaCryptVariant
	switch {
	case strings.HasPrefix(s, shaCrypt256.prefix):
		v = shaCrypt256
	case strings.HasPrefix(s, shaCrypt512.prefix):
		v = shaCrypt512
	default:
		return nil, fmt.Errorf("%w: want $5$ or $6$", errShaCrypt)
	}
	rest := s[len(v.prefix):]
	h := &shaCryptHash{v: v, rounds: shaCryptDefaultRounds}
	setting := v.prefix
	if r, ok := strings.CutPrefix(rest, "rounds="); ok {
		n, after, ok := strings.Cut(r, "$")
		rounds, err := strconv.ParseUint(n, 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("%w: bad rounds=", errShaCrypt)
		}
		h.rounds = int(min(max(rounds, shaCryptMinRounds), shaCryptMaxRounds))
		setting += "rounds=" + strconv.Itoa(h.rounds) + "$"
		rest = after
	}
	salt, _, _ := strings.Cut(rest, "$")
	h.salt = salt[:min(len(salt), shaCryptMaxSalt)]
	h.setting = setting + h.salt
	return h, nil
}

// parseShaCrypt reads a stored "$5$[rounds=N$]salt$hash" or the same with
// "$6$", which must be as crypt writes it.
func parseShaCrypt(s string) (*shaCryptHash, error) {
	h, err := parseShaCryptSetting(s)
	if err != nil {
		return nil, err
	}
	sum, ok := strings.CutPrefix(s, h.setting+"$")
	if !ok {
		return nil, fmt.Errorf("%w: salt longer than 16 characters or rounds out of range", errShaCrypt)
	}
	if want := 4*len(h.v.order) + len(h.v.tail) + 1; len(sum) != want || !isCryptBase64(sum) {
		return nil, fmt.Errorf("%w: the hash after the salt must be %d characters of ./0-9A-Za-z", errShaCrypt, want)
	}
	if strings.ContainsAny(h.salt, ":\n\x00") {
		return nil, fmt.Errorf("%w: bad salt", errShaCrypt)
	}
	h.encrypted = s
	return h, nil
}

// shaCrypt is crypt(3) of password with a "$5$" or "$6$" setting.
func shaCrypt(password, setting string) (string, error) {
	h, err := parseShaCryptSetting(setting)
	if err != nil {
		return "", err
	}
	return h.v.crypt([]byte(password), []byte(h.salt), h.rounds, h.setting), nil
}

// verify recomputes the string for password and compares it whole.
func (h *shaCryptHash) verify(password []byte) bool {
	got := h.v.crypt(password, []byte(h.salt), h.rounds, h.setting)
	return subtle.ConstantTimeCompare([]byte(got), []byte(h.encrypted)) == 1
}

// crypt is the algorithm of the specification, steps 1 to 22; setting
// is the "$N$[rounds=R$]salt" that the result starts with.
func (v *shaCryptVariant) crypt(key, salt []byte, rounds int, setting string) string {
	h := v.new()
	size := h.Size()

	// Digest B: key, salt, key.
	h.Write(key)
	h.Write(salt)
	h.Write(key)
	b := h.Sum(nil)

	// Digest A: key, salt, B for each block of the key, then B or the key
	// for each bit of the key's length.
	h.Reset()
	h.Write(key)
	h.Write(salt)
	writeRepeated(h, b, len(key))
	for n := len(key); n > 0; n >>= 1 {
		if n&1 != 0 {
			h.Write(b)
		} else {
			h.Write(key)
		}
	}
	a := h.Sum(nil)

	// P: the digest of the key repeated len(key) times, stretched to len(key).
	h.Reset()
	for range len(key) {
		h.Write(key)
	}
	p := stretch(h.Sum(nil), len(key))

	// S: the digest of the salt repeated 16+A[0] times, stretched to len(salt).
	h.Reset()
	for range 16 + int(a[0]) {
		h.Write(salt)
	}
	s := stretch(h.Sum(nil), len(salt))

	c := a
	for i := range rounds {
		h.Reset()
		if i%2 != 0 {
			h.Write(p)
		} else {
			h.Write(c)
		}
		if i%3 != 0 {
			h.Write(s)
		}
		if i%7 != 0 {
			h.Write(p)
		}
		if i%2 != 0 {
			h.Write(c)
		} else {
			h.Write(p)
		}
		c = h.Sum(c[:0])
	}

	out := make([]byte, 0, len(setting)+1+(size*8+5)/6)
	out = append(append(out, setting...), '$')
	for _, g := range v.order {
		out = appendCrypt64(out, uint(c[g[0]])<<16|uint(c[g[1]])<<8|uint(c[g[2]]), 4)
	}
	var w uint
	for _, i := range v.tail {
		w = w<<8 | uint(c[i])
	}
	return string(appendCrypt64(out, w, len(v.tail)+1))
}

// writeRepeated writes n bytes of b, repeated as needed.
func writeRepeated(h hash.Hash, b []byte, n int) {
	for ; n > len(b); n -= len(b) {
		h.Write(b)
	}
	h.Write(b[:n])
}

// stretch repeats d to n bytes.
func stretch(d []byte, n int) []byte {
	out := make([]byte, 0, n)
	for len(out)+len(d) <= n {
		out = append(out, d...)
	}
	return append(out, d[:n-len(out)]...)
}

// crypt64 is the base 64 alphabet of crypt(3), least significant first.
const crypt64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func appendCrypt64(out []byte, w uint, n int) []byte {
	for range n {
		out = append(out, crypt64[w&0x3f])
		w >>= 6
	}
	return out
}

func isCryptBase64(s string) bool {
	for i := range len(s) {
		if strings.IndexByte(crypt64, s[i]) < 0 {
			return false
		}
	}
	return true
}
