package proxyproto

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	goproxyproto "github.com/pires/go-proxyproto"
)

// after is what a client sends right behind the header; it must stay unread.
const after = "a1 CAPABILITY\r\n"

func tcp(s string) *net.TCPAddr {
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		panic(err)
	}
	return a
}

func mustFormat(t *testing.T, version int, src, dst net.Addr) []byte {
	t.Helper()
	b, err := Format(version, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadHeader(t *testing.T) {
	withTLV := func() []byte {
		h := goproxyproto.HeaderProxyFromAddrs(2, tcp("192.0.2.7:4711"), tcp("198.51.100.1:993"))
		if err := h.SetTLVs([]goproxyproto.TLV{{Type: goproxyproto.PP2_TYPE_AUTHORITY, Value: []byte("mail.example.org")}}); err != nil {
			t.Fatal(err)
		}
		b, err := h.Format()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name     string
		header   []byte
		version  int
		local    bool
		src, dst string
	}{
		{"v1 tcp4", []byte("PROXY TCP4 192.0.2.7 198.51.100.1 4711 143\r\n"), 1, false, "192.0.2.7:4711", "198.51.100.1:143"},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 4711 110\r\n"), 1, false, "[2001:db8::7]:4711", "[2001:db8::1]:110"},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), 1, true, "", ""},
		{"v1 unknown with addresses", []byte("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"), 1, true, "", ""},
		{"v2 tcp4", mustFormat(t, 2, tcp("192.0.2.7:4711"), tcp("198.51.100.1:25")), 2, false, "192.0.2.7:4711", "198.51.100.1:25"},
		{"v2 tcp6", mustFormat(t, 2, tcp("[2001:db8::7]:4711"), tcp("[2001:db8::1]:993")), 2, false, "[2001:db8::7]:4711", "[2001:db8::1]:993"},
		{"v2 local", mustFormat(t, 2, nil, nil), 2, true, "", ""},
		{"v2 with a TLV", withTLV(), 2, false, "192.0.2.7:4711", "198.51.100.1:993"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := strings.NewReader(string(tc.header) + after)
			h, err := ReadHeader(r)
			if err != nil {
				t.Fatal(err)
			}
			if rest, _ := io.ReadAll(r); string(rest) != after {
				t.Errorf("left %q unread, want %q", rest, after)
			}
			if h.Version != tc.version || h.Local != tc.local {
				t.Errorf("version %d local %v, want %d %v", h.Version, h.Local, tc.version, tc.local)
			}
			if tc.local {
				if h.Source != nil || h.Dest != nil {
					t.Errorf("LOCAL header with addresses %v %v", h.Source, h.Dest)
				}
				return
			}
			if h.Source.String() != tc.src || h.Dest.String() != tc.dst {
				t.Errorf("source %v dest %v, want %s %s", h.Source, h.Dest, tc.src, tc.dst)
			}
		})
	}
}

func TestReadHeaderRefuses(t *testing.T) {
	v2 := mustFormat(t, 2, tcp("192.0.2.7:4711"), tcp("198.51.100.1:25"))
	udp := bytes.Clone(v2)
	udp[13] = 0x12 // AF_INET, DGRAM
	long := bytes.Clone(v2[:16])
	long[14], long[15] = 0x20, 0x00 // 8192 bytes
	unix, err := goproxyproto.HeaderProxyFromAddrs(2, &net.UnixAddr{Name: "/a", Net: "unix"}, &net.UnixAddr{Name: "/b", Net: "unix"}).Format()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		in   string
		want error
	}{
		{"imap command", "a1 LOGIN alice pw\r\n", ErrNoHeader},
		{"tls client hello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ErrNoHeader},
		{"lower case", "proxy TCP4 192.0.2.7 198.51.100.1 4711 143\r\n", ErrNoHeader},
		{"v1 without CRLF", "PROXY TCP4 192.0.2.7 198.51.100.1 4711 143\n", ErrInvalid},
		{"v1 too long", "PROXY TCP4 " + strings.Repeat("1", 120) + "\r\n", ErrInvalid},
		{"v1 bad address", "PROXY TCP4 192.0.2.700 198.51.100.1 4711 143\r\n", ErrInvalid},
		{"v1 v6 address in tcp4", "PROXY TCP4 2001:db8::7 198.51.100.1 4711 143\r\n", ErrInvalid},
		{"v1 bad port", "PROXY TCP4 192.0.2.7 198.51.100.1 65536 143\r\n", ErrInvalid},
		{"v1 unknown protocol", "PROXY UDP4 192.0.2.7 198.51.100.1 4711 143\r\n", ErrInvalid},
		{"v1 cut off", "PROXY TCP4 192.0.2.7", ErrInvalid},
		{"v2 cut off", string(v2[:20]), ErrInvalid},
		{"v2 cut off in the fixed part", string(v2[:14]), ErrInvalid},
		{"v2 bad signature", "\r\n\r\n\x00\r\nQUIT?" + string(v2[12:]), ErrInvalid},
		{"v2 udp", string(udp), ErrInvalid},
		{"v2 unix", string(unix), ErrInvalid},
		{"v2 too long", string(long), ErrInvalid},
		{"v2 version 3", string(v2[:12]) + "\x31" + string(v2[13:]), ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if !strings.Contains(tc.name, "cut off") {
				in += after
			}
			h, err := ReadHeader(strings.NewReader(in))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %+v, %v; want %v", h, err, tc.want)
			}
		})
	}
	// A peer that closes before sending anything is neither: it just left.
	if _, err := ReadHeader(strings.NewReader("")); !errors.Is(err, io.EOF) {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		name     string
		version  int
		src, dst net.Addr
		want     string
	}{
		{"v1 tcp4", 1, tcp("192.0.2.7:4711"), tcp("198.51.100.1:143"), "PROXY TCP4 192.0.2.7 198.51.100.1 4711 143\r\n"},
		{"v1 tcp6", 1, tcp("[2001:db8::7]:4711"), tcp("[2001:db8::1]:143"), "PROXY TCP6 2001:db8::7 2001:db8::1 4711 143\r\n"},
		{"v1 mixed families", 1, tcp("192.0.2.7:4711"), tcp("[2001:db8::1]:143"), "PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 4711 143\r\n"},
		{"v1 v4-mapped listener", 1, tcp("[::ffff:192.0.2.7]:4711"), tcp("[::ffff:198.51.100.1]:143"), "PROXY TCP4 192.0.2.7 198.51.100.1 4711 143\r\n"},
		{"v1 probe", 1, nil, nil, "PROXY UNKNOWN\r\n"},
		{"v2 probe", 2, nil, nil, "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"},
		{"v2 tcp4", 2, tcp("192.0.2.7:4711"), tcp("198.51.100.1:25"),
			"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x07\xc6\x33\x64\x01\x12\x67\x00\x19"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mustFormat(t, tc.version, tc.src, tc.dst)
			if string(got) != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := Format(3, nil, nil); err == nil {
		t.Error("version 3 formatted")
	}
}

// TestTLSVersion: the client's TLS travels in v2's PP2_TYPE_SSL TLV, with
// the version sub-TLV, as HAProxy's send-proxy-v2-ssl sends it, and reads
// back; v1 and LOCAL headers have no room for it.
func TestTLSVersion(t *testing.T) {
	h := NewHeader(2, tcp("192.0.2.7:4711"), tcp("198.51.100.1:993"))
	h.TLSVersion = TLSVersion(tls.VersionTLS13)
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	// 12 address bytes, then type 0x20 of 15 bytes: client 0x01, verify 1,
	// and the sub-TLV 0x21 "TLSv1.3".
	if string(b[14:16]) != "\x00\x1e" || string(b[28:]) != "\x20\x00\x0f\x01\x00\x00\x00\x01\x21\x00\x07TLSv1.3" {
		t.Fatalf("header %q", b)
	}
	back, err := ReadHeader(bytes.NewReader(b))
	if err != nil || back.TLSVersion != "TLSv1.3" || back.Source.String() != "192.0.2.7:4711" {
		t.Fatalf("read back %+v, %v", back, err)
	}
	plain, _ := Format(2, tcp("192.0.2.7:4711"), tcp("198.51.100.1:993"))
	if back, err := ReadHeader(bytes.NewReader(plain)); err != nil || back.TLSVersion != "" {
		t.Errorf("a header without the TLV reads as %+v, %v", back, err)
	}
	for _, h := range []*Header{{Version: 1, Source: tcp("192.0.2.7:4711"), Dest: tcp("198.51.100.1:993"), TLSVersion: "TLSv1.2"}, {Version: 2, Local: true, TLSVersion: "TLSv1.2"}} {
		b, err := h.Format()
		if err != nil {
			t.Fatal(err)
		}
		if back, err := ReadHeader(bytes.NewReader(b)); err != nil || back.TLSVersion != "" {
			t.Errorf("%+v formats as %q, reads as %+v, %v", h, b, back, err)
		}
	}
	if TLSVersion(tls.VersionTLS12) != "TLSv1.2" || TLSVersion(0x9999) != "TLS" {
		t.Error("TLSVersion names")
	}
}

func TestConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	h := &Header{Version: 2, Source: tcp("192.0.2.7:4711"), Dest: tcp("198.51.100.1:993")}
	c := NewConn(a, h)
	if c.RemoteAddr().String() != "192.0.2.7:4711" || c.LocalAddr().String() != "198.51.100.1:993" {
		t.Fatalf("addresses %v %v", c.RemoteAddr(), c.LocalAddr())
	}
	// A TLS server (implicit TLS, STARTTLS) over it reports the same.
	if tc := tls.Server(c, &tls.Config{}); tc.RemoteAddr().String() != "192.0.2.7:4711" {
		t.Errorf("over TLS: %v", tc.RemoteAddr())
	}
	if Unwrap(c) != a || c.(*Conn).NetConn() != a || Unwrap(a) != a {
		t.Error("Unwrap does not give the accepted conn")
	}
	if NewConn(a, &Header{Version: 2, Local: true}) != a {
		t.Error("a LOCAL header wrapped the conn")
	}
}

// FuzzReadHeader: whatever a peer sends, ReadHeader never panics, never
// reads past the header it accepts (nor more than a signature of what it
// refuses as no header), and what it accepts formats back to a header that
// reads the same.
func FuzzReadHeader(f *testing.F) {
	for _, s := range []string{
		"PROXY TCP4 192.0.2.7 198.51.100.1 4711 143\r\n",
		"PROXY TCP6 2001:db8::7 2001:db8::1 4711 110\r\n",
		"PROXY UNKNOWN\r\n",
		"PROXY UNKNOWN 1 2 3 4\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\n",
		"a1 LOGIN alice pw\r\n",
		"\x16\x03\x01",
	} {
		f.Add([]byte(s + after))
	}
	for _, a := range [][2]net.Addr{
		{tcp("192.0.2.7:4711"), tcp("198.51.100.1:25")},
		{tcp("[2001:db8::7]:4711"), tcp("[2001:db8::1]:993")},
		{nil, nil},
		{&net.UnixAddr{Name: "/a", Net: "unix"}, &net.UnixAddr{Name: "/b", Net: "unix"}},
		{&net.UDPAddr{IP: net.IPv4(1, 2, 3, 4), Port: 5}, &net.UDPAddr{IP: net.IPv4(6, 7, 8, 9), Port: 10}},
	} {
		b, _ := goproxyproto.HeaderProxyFromAddrs(2, a[0], a[1]).Format()
		f.Add(append(b, after...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, err := ReadHeader(r)
		used := len(data) - r.Len()
		if err != nil {
			if errors.Is(err, ErrNoHeader) && used > 5 {
				t.Fatalf("read %d bytes of a stream with no header", used)
			}
			return
		}
		if used > v2FixedLen+maxV2Body {
			t.Fatalf("accepted a header of %d bytes", used)
		}
		again, err := Parse(data[:used])
		if err != nil || fmt.Sprint(again) != fmt.Sprint(h) {
			t.Fatalf("the header read (%q) parses as %+v, %v; was %+v", data[:used], again, err, h)
		}
		if h.Local {
			return
		}
		b, err := h.Format()
		if err != nil {
			t.Fatalf("format %+v: %v", h, err)
		}
		back, err := ReadHeader(bytes.NewReader(b))
		if err != nil || !back.Source.IP.Equal(h.Source.IP) || back.Source.Port != h.Source.Port ||
			!back.Dest.IP.Equal(h.Dest.IP) || back.Dest.Port != h.Dest.Port || back.TLSVersion != h.TLSVersion {
			t.Fatalf("%+v formats as %q, which reads as %+v, %v", h, b, back, err)
		}
	})
}

// FuzzFormat: any pair of TCP addresses formats, in either version, to a
// header that reads back as the same addresses.
func FuzzFormat(f *testing.F) {
	f.Add(uint8(1), []byte{192, 0, 2, 7}, uint16(4711), []byte{198, 51, 100, 1}, uint16(143))
	f.Add(uint8(2), []byte(net.ParseIP("2001:db8::7")), uint16(1), []byte{198, 51, 100, 1}, uint16(0))
	f.Add(uint8(3), []byte{192, 0, 2, 7}, uint16(4711), []byte{198, 51, 100, 1}, uint16(993))
	f.Fuzz(func(t *testing.T, v uint8, sip []byte, sport uint16, dip []byte, dport uint16) {
		version, clientTLS := int(v%2)+1, v&2 != 0
		tlsVersion := ""
		if clientTLS {
			tlsVersion = TLSVersion(tls.VersionTLS13)
		}
		if (len(sip) != 4 && len(sip) != 16) || (len(dip) != 4 && len(dip) != 16) {
			return
		}
		src := &net.TCPAddr{IP: net.IP(sip), Port: int(sport)}
		dst := &net.TCPAddr{IP: net.IP(dip), Port: int(dport)}
		out := NewHeader(version, src, dst)
		out.TLSVersion = tlsVersion
		b, err := out.Format()
		if err != nil {
			t.Fatalf("format %v %v: %v", src, dst, err)
		}
		h, err := ReadHeader(bytes.NewReader(b))
		if err != nil || h.Local || !h.Source.IP.Equal(src.IP) || h.Source.Port != src.Port ||
			!h.Dest.IP.Equal(dst.IP) || h.Dest.Port != dst.Port || h.Version != version ||
			(h.TLSVersion != "") != (clientTLS && version == 2) {
			t.Fatalf("%v -> %v formats as %q, which reads as %+v, %v", src, dst, b, h, err)
		}
	})
}

func ExampleFormat() {
	client := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4711}
	listener := &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 143}
	v1, _ := Format(1, client, listener)
	probe, _ := Format(1, nil, nil)
	fmt.Printf("%q\n%q\n", v1, probe)
	// Output:
	// "PROXY TCP4 192.0.2.7 198.51.100.1 4711 143\r\n"
	// "PROXY UNKNOWN\r\n"
}

func ExampleReadHeader() {
	conn := strings.NewReader("PROXY TCP4 192.0.2.7 198.51.100.1 4711 143\r\na1 CAPABILITY\r\n")
	h, err := ReadHeader(conn)
	if err != nil {
		fmt.Println(err)
		return
	}
	rest, _ := io.ReadAll(conn)
	fmt.Printf("client %v, connected to %v; then %q\n", h.Source, h.Dest, rest)
	// Output: client 192.0.2.7:4711, connected to 198.51.100.1:143; then "a1 CAPABILITY\r\n"
}
