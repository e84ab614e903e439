package peer

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var testSecret = []byte("correct horse battery staple")

func testMessage() *Message {
	return &Message{Node: "lb1", Priority: -7, Role: Active, Leaving: true,
		Epoch: 1_700_000_000_000_000_000, Seq: 42, Sent: time.Unix(1_700_000_001, 5)}
}

func mustEncode(t testing.TB, m *Message, secret []byte) []byte {
	t.Helper()
	b, err := m.Encode(nil, secret)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMessageRoundTrip(t *testing.T) {
	m := testMessage()
	b := mustEncode(t, m, testSecret)
	if len(b) != headerLen+len(m.Node)+macLen {
		t.Errorf("length %d", len(b))
	}
	got, err := Decode(b, testSecret)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("decoded %+v, want %+v", got, m)
	}
	withData := testMessage()
	withData.Payload = []byte(`{"drained":["mail1"]}`)
	if got, err := Decode(mustEncode(t, withData, testSecret), testSecret); err != nil || !reflect.DeepEqual(got, withData) {
		t.Errorf("with payload: decoded %+v (%v), want %+v", got, err, withData)
	}
	long := &Message{Node: strings.Repeat("n", maxNodeLen), Role: Standby, Sent: time.Unix(0, 1)}
	if got, err := Decode(mustEncode(t, long, testSecret), testSecret); err != nil || got.Node != long.Node {
		t.Errorf("longest node name: %v", err)
	}
}

func TestEncodeRefuses(t *testing.T) {
	for _, m := range []*Message{
		{Node: "", Role: Active},
		{Node: strings.Repeat("n", maxNodeLen+1), Role: Active},
		{Node: "lb1", Role: Role(2)},
	} {
		if _, err := m.Encode(nil, testSecret); err == nil {
			t.Errorf("Encode(%q, role %d) succeeded", m.Node, m.Role)
		}
	}
}

// TestDecodeRejects: a wrong secret, any flipped bit, a cut or padded
// datagram, and fields that only a MAC-holder could have set wrong.
func TestDecodeRejects(t *testing.T) {
	good := mustEncode(t, testMessage(), testSecret)
	if _, err := Decode(good, []byte("wrong secret")); !errors.Is(err, ErrBadMAC) {
		t.Errorf("wrong secret: %v", err)
	}
	for i := range good {
		for bit := range 8 {
			b := bytes.Clone(good)
			b[i] ^= 1 << bit
			if _, err := Decode(b, testSecret); err == nil {
				t.Fatalf("flipped bit %d of byte %d accepted", bit, i)
			}
		}
	}
	for n := range len(good) {
		if _, err := Decode(good[:n], testSecret); err == nil {
			t.Fatalf("first %d bytes accepted", n)
		}
	}
	if _, err := Decode(append(bytes.Clone(good), 0), testSecret); !errors.Is(err, ErrMalformed) {
		t.Errorf("padded: %v", err)
	}
	// Well authenticated but not a heartbeat we know: still refused.
	for name, edit := range map[string]func(b []byte){
		"version 2": func(b []byte) { b[4] = 2 },
		"role 7":    func(b []byte) { b[5] = 7 },
		"flags 2":   func(b []byte) { b[6] = 2 },
	} {
		b := bytes.Clone(good[:len(good)-macLen])
		edit(b)
		b = append(b, sum(testSecret, b)...)
		if _, err := Decode(b, testSecret); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestGuard(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	msg := func(node string, epoch int64, seq uint64, sentOffset time.Duration) *Message {
		return &Message{Node: node, Role: Active, Epoch: epoch, Seq: seq, Sent: now.Add(sentOffset)}
	}
	type step struct {
		m    *Message
		at   time.Duration // after now
		want error
	}
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"in order", []step{{msg("lb2", 1, 1, 0), 0, nil}, {msg("lb2", 1, 2, 0), 0, nil}, {msg("lb2", 1, 9, 0), 0, nil}}},
		{"replayed", []step{{msg("lb2", 1, 1, 0), 0, nil}, {msg("lb2", 1, 2, 0), 0, nil}, {msg("lb2", 1, 2, 0), 0, ErrReplay}}},
		{"reordered", []step{{msg("lb2", 1, 5, 0), 0, nil}, {msg("lb2", 1, 4, 0), 0, ErrReplay}}},
		{"restart, higher epoch", []step{{msg("lb2", 1, 500, 0), 0, nil}, {msg("lb2", 2, 1, 0), 0, nil}}},
		{"old epoch replayed", []step{{msg("lb2", 2, 1, 0), 0, nil}, {msg("lb2", 1, 900, 0), 0, ErrReplay}}},
		{"lower epoch after silence (clock stepped back)", []step{{msg("lb2", 2, 1, 0), 0, nil}, {msg("lb2", 1, 1, 2*time.Second), 2 * time.Second, nil}}},
		{"own name", []step{{msg("lb1", 1, 1, 0), 0, ErrOwnNode}}},
		{"too old", []step{{msg("lb2", 1, 1, -11*time.Second), 0, ErrStale}}},
		{"from the future", []step{{msg("lb2", 1, 1, 11*time.Second), 0, ErrStale}}},
		{"within the window", []step{{msg("lb2", 1, 1, -9*time.Second), 0, nil}, {msg("lb2", 1, 2, 9*time.Second), 0, nil}}},
		{"refused does not count", []step{{msg("lb2", 1, 5, -time.Minute), 0, ErrStale}, {msg("lb2", 1, 2, 0), 0, nil}}},
		{"per sender", []step{{msg("lb2", 1, 5, 0), 0, nil}, {msg("lb3", 1, 1, 0), 0, nil}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newGuard("lb1", 10*time.Second, time.Second)
			for i, s := range c.steps {
				err := g.check(s.m, now.Add(s.at))
				if s.want == nil && err != nil || s.want != nil && !errors.Is(err, s.want) {
					t.Errorf("step %d: %v, want %v", i, err, s.want)
				}
			}
		})
	}
}

// FuzzDecode feeds the decoder what the network may: it must never panic,
// and whatever it accepts must encode back to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(mustEncode(f, testMessage(), testSecret))
	f.Add(mustEncode(f, &Message{Node: "x", Role: Standby, Sent: time.Unix(0, 0)}, testSecret))
	f.Add(mustEncode(f, &Message{Node: "x", Role: Active, Sent: time.Unix(0, 0), Payload: []byte("{}")}, testSecret))
	f.Add([]byte(magic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		// As received, and signed: the second reaches the field checks.
		for _, d := range [][]byte{b, append(bytes.Clone(b), sum(testSecret, b)...)} {
			m, err := Decode(d, testSecret)
			if err != nil {
				continue
			}
			again, err := m.Encode(nil, testSecret)
			if err != nil || !bytes.Equal(again, d) {
				t.Fatalf("accepted %x but encodes to %x (%v)", d, again, err)
			}
		}
	})
}
