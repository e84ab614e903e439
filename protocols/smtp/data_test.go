package smtp

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// textprotoDot is what go-smtp's client sent for msg: net/textproto's
// DotWriter, which dotStuffer replaces.
func textprotoDot(msg []byte) []byte {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	dw := textproto.NewWriter(w).DotWriter()
	dw.Write(msg)
	dw.Close()
	return buf.Bytes()
}

// stuff encodes msg with dotStuffer, fed in pieces of at most chunk bytes.
func stuff(msg []byte, chunk int) []byte {
	var d dotStuffer
	var out []byte
	for len(msg) > chunk {
		out = d.append(out, msg[:chunk])
		msg = msg[chunk:]
	}
	out = d.append(out, msg)
	return d.end(out)
}

func TestDotStuffer(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "\r\n.\r\n"},
		{"a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"no end", "no end\r\n.\r\n"},
		{".lead\r\n..two\r\nmid.dot\r\n.", "..lead\r\n...two\r\nmid.dot\r\n..\r\n.\r\n"},
		{"bare\nlf\n.dot\n", "bare\r\nlf\r\n..dot\r\n.\r\n"},
		{"bare\rcr.\r.x\r", "bare\rcr.\r.x\r\n.\r\n"},
		{"two\r\r\nthree\r\r\r\n", "two\r\r\r\nthree\r\r\r\n.\r\n"},
		{"\r\n.\r\n", "\r\n..\r\n.\r\n"},
	} {
		for _, chunk := range []int{1, 2, 3, 7, 1 << 20} {
			if got := stuff([]byte(tc.in), chunk); string(got) != tc.want {
				t.Errorf("%q in pieces of %d: got %q, want %q", tc.in, chunk, got, tc.want)
			}
		}
		if got := textprotoDot([]byte(tc.in)); string(got) != tc.want {
			t.Errorf("%q: the test's expectation %q is not what net/textproto sends, %q", tc.in, tc.want, got)
		}
	}
}

// FuzzDotStuffer: whatever a client's message holds, and however it
// arrives in pieces, the backend gets exactly what net/textproto's
// DotWriter (go-smtp's client) would have sent.
func FuzzDotStuffer(f *testing.F) {
	for _, s := range []string{"", "a\r\n.b\r\n", ".\n.\r.\r\n..", "x\r", "\n\n\r\r\n.\r\n.", "Subject: x\r\n\r\nbody\r\n"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, msg []byte, chunk uint8) {
		want := textprotoDot(msg)
		if got := stuff(msg, int(chunk)+1); !bytes.Equal(got, want) {
			t.Fatalf("%q in pieces of %d: got %q, want %q", msg, int(chunk)+1, got, want)
		}
	})
}
