package proxy

import (
	"context"
	"io"
	"mailproxy/proxy/config"
	"net"
	"testing"
	"time"
)

// addrConn is a conn that only has addresses.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

func TestFromBalancer(t *testing.T) {
	lc := &config.ListenerConfig{ProxyProtocol: true, ProxyProtocolTrusted: []string{"127.0.0.0/8", "::1", "192.0.2.10", "2001:db8::/32", "::ffff:198.51.100.0/120"}}
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:4000", true},
		{"127.1.2.3:4000", true},
		{"[::ffff:127.0.0.1]:4000", true}, // dual-stack listener
		{"[::1]:4000", true},
		{"192.0.2.10:4000", true},
		{"192.0.2.11:4000", false},
		{"[2001:db8::7]:4000", true},
		{"[fe80::1%eth0]:4000", false},
		{"198.51.100.77:4000", true},
		{"203.0.113.1:4000", false},
	} {
		a, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := fromBalancer(lc, addrConn{remote: a}); got != tc.want {
			t.Errorf("%s trusted: %v, want %v", tc.addr, got, tc.want)
		}
	}
	if fromBalancer(&config.ListenerConfig{ProxyProtocol: true}, addrConn{remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}) {
		t.Error("an empty list trusts loopback")
	}
}

func TestWriteProxyHeader(t *testing.T) {
	src := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4711}
	dst := &net.TCPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 143}
	for _, tc := range []struct {
		version  string
		src, dst net.Addr
		tls      string
		want     string
	}{
		{"", src, dst, "", ""},
		{"v1", src, dst, "", "PROXY TCP4 192.0.2.7 198.51.100.1 4711 143\r\n"},
		{"v1", src, dst, "TLSv1.3", "PROXY TCP4 192.0.2.7 198.51.100.1 4711 143\r\n"},
		{"v1", nil, nil, "", "PROXY UNKNOWN\r\n"},
		{"v2", nil, nil, "", "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"},
		{"v2", src, dst, "TLSv1.3", "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x1e\xc0\x00\x02\x07\xc6\x33\x64\x01\x12\x67\x00\x8f" +
			"\x20\x00\x0f\x01\x00\x00\x00\x01\x21\x00\x07TLSv1.3"},
	} {
		a, b := net.Pipe()
		got := make(chan string, 1)
		go func() {
			b.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			all, _ := io.ReadAll(b)
			got <- string(all)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := writeProxyHeader(ctx, a, tc.version, tc.src, tc.dst, tc.tls)
		cancel()
		a.Close()
		if g := <-got; err != nil || g != tc.want {
			t.Errorf("%q: wrote %q, %v; want %q", tc.version, g, err, tc.want)
		}
		b.Close()
	}
}
