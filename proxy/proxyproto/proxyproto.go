// Package proxyproto reads and writes the PROXY protocol header, versions 1
// (text) and 2 (binary), that a TCP balancer puts in front of a connection
// to tell the server behind it who the client is.
//
// Parsing and formatting are github.com/pires/go-proxyproto's (imported as
// goproxyproto). This package adds what mailproxy needs around them: reading
// a header off a connection without reading one byte past it (what follows
// belongs to TLS or the mail protocol, read by other code from the bare
// connection), a Conn whose addresses are the header's, and the header a
// backend or a health probe is sent.
//
// Spec: HAProxy's "The PROXY protocol", versions 1 and 2
// (https://www.haproxy.org/download/3.0/doc/proxy-protocol.txt).
package proxyproto

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"

	goproxyproto "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// Header sizes from the spec.
const (
	maxV1Len   = 107  // "PROXY UNKNOWN <39> <39> 65535 65535\r\n"
	minV1Len   = 15   // "PROXY UNKNOWN\r\n"
	v2FixedLen = 16   // signature, version/command, family, length
	maxV2Body  = 4096 // addresses and TLVs; the spec allows 65535, no balancer sends that much
)

var (
	v1Sig = []byte("PROXY ")
	v2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// ErrNoHeader means the stream does not start with a PROXY signature: the
// peer is not a balancer speaking the protocol (or speaks it wrongly).
var ErrNoHeader = errors.New("no PROXY protocol header")

// ErrInvalid means the stream starts with a PROXY signature but the header
// is malformed, too long, or not for TCP.
var ErrInvalid = errors.New("invalid PROXY protocol header")

// Header is what a PROXY header says about a connection.
type Header struct {
	Version int // 1 or 2
	// Local is set for a v2 LOCAL command and a v1 "PROXY UNKNOWN": the
	// balancer opened the connection itself (a health check, say), and the
	// connection's own addresses are the ones to use. Source and Dest are
	// nil then.
	Local  bool
	Source *net.TCPAddr // the client
	Dest   *net.TCPAddr // the address the client connected to (the balancer's)
	// TLSVersion (v2 only) is set when the client's connection to the
	// sender is TLS: its version as OpenSSL names it ("TLSv1.3"), carried
	// in a PP2_TYPE_SSL TLV as HAProxy's send-proxy-v2-ssl does. Dovecot
	// counts such a connection as secured, so disable_plaintext_auth lets
	// the login through.
	TLSVersion string
}

// TLSVersion names a crypto/tls version as OpenSSL does, for
// Header.TLSVersion.
func TLSVersion(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return "TLS"
}

// ReadHeader reads exactly one PROXY header (v1 or v2) from r and parses it.
// It reads byte by byte where it must, so that nothing after the header is
// consumed; r should be the bare connection, under a read deadline set by
// the caller (a balancer sends the header at once). Errors wrap ErrNoHeader,
// ErrInvalid, or the read error (a timeout, io.EOF).
func ReadHeader(r io.Reader) (*Header, error) {
	raw, err := readRaw(r)
	if err != nil {
		return nil, err
	}
	return Parse(raw)
}

// readRaw reads the bytes of one header and no more.
func readRaw(r io.Reader) ([]byte, error) {
	buf := make([]byte, 5, maxV1Len)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, readErr(err, false)
	}
	switch {
	case bytes.Equal(buf, v1Sig[:5]):
		return readV1(r, buf)
	case bytes.Equal(buf, v2Sig[:5]):
		return readV2(r, buf)
	}
	return nil, fmt.Errorf("%w: stream starts with %q", ErrNoHeader, buf)
}

// readV1 reads the rest of a text header: at least the shortest header,
// then byte by byte up to LF, since nothing tells its length.
func readV1(r io.Reader, buf []byte) ([]byte, error) {
	buf = buf[:minV1Len]
	if _, err := io.ReadFull(r, buf[5:]); err != nil {
		return nil, readErr(err, true)
	}
	if !bytes.HasPrefix(buf, v1Sig) {
		return nil, fmt.Errorf("%w: v1 header starts with %q", ErrInvalid, buf)
	}
	for buf[len(buf)-1] != '\n' {
		if len(buf) == maxV1Len {
			return nil, fmt.Errorf("%w: v1 header longer than %d bytes", ErrInvalid, maxV1Len)
		}
		var b [1]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, readErr(err, true)
		}
		buf = append(buf, b[0])
	}
	return buf, nil
}

// readV2 reads the rest of a binary header: the fixed part, whose last two
// bytes give the length of the rest.
func readV2(r io.Reader, buf []byte) ([]byte, error) {
	buf = append(buf[:5], make([]byte, v2FixedLen-5)...)
	if _, err := io.ReadFull(r, buf[5:]); err != nil {
		return nil, readErr(err, true)
	}
	if !bytes.Equal(buf[:len(v2Sig)], v2Sig) {
		return nil, fmt.Errorf("%w: bad v2 signature %q", ErrInvalid, buf[:len(v2Sig)])
	}
	n := int(buf[14])<<8 | int(buf[15])
	if n > maxV2Body {
		return nil, fmt.Errorf("%w: v2 header of %d bytes (at most %d taken)", ErrInvalid, n, maxV2Body)
	}
	buf = append(buf, make([]byte, n)...)
	if _, err := io.ReadFull(r, buf[v2FixedLen:]); err != nil {
		return nil, readErr(err, true)
	}
	return buf, nil
}

// readErr keeps a cut-off header apart from a peer that closed before
// sending anything (io.EOF).
func readErr(err error, started bool) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || started && errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: cut off", ErrInvalid)
	}
	return fmt.Errorf("read PROXY header: %w", err)
}

// Parse parses one complete header, v1 or v2, and nothing else: raw must
// hold exactly the header. PROXY headers for UDP or unix sockets are
// refused; TLVs (v2) are ignored.
func Parse(raw []byte) (*Header, error) {
	br := bufio.NewReaderSize(bytes.NewReader(raw), max(len(raw), 16))
	h, err := goproxyproto.Read(br)
	switch {
	case errors.Is(err, goproxyproto.ErrNoProxyProtocol):
		return nil, ErrNoHeader
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	case br.Buffered() > 0:
		return nil, fmt.Errorf("%w: %d bytes after the header", ErrInvalid, br.Buffered())
	}
	out := &Header{Version: int(h.Version)}
	if h.Command.IsLocal() || h.TransportProtocol.IsUnspec() {
		out.Local = true
		return out, nil
	}
	src, dst, ok := h.TCPAddrs()
	if !ok || src == nil || dst == nil {
		return nil, fmt.Errorf("%w: not TCP (family and protocol %#x)", ErrInvalid, byte(h.TransportProtocol))
	}
	out.Source, out.Dest = src, dst
	out.TLSVersion = tlsVersion(h)
	return out, nil
}

// tlsVersion reads the PP2_TYPE_SSL TLV. TLVs that do not parse are
// ignored, as the spec lets a receiver ignore any TLV.
func tlsVersion(h *goproxyproto.Header) string {
	tlvs, err := h.TLVs()
	if err != nil {
		return ""
	}
	if ssl, ok := tlvparse.FindSSL(tlvs); ok && ssl.ClientSSL() {
		v, _ := ssl.SSLVersion()
		return v
	}
	return ""
}

// NewHeader returns the header, version 1 or 2, for a client at src that
// connected to dst. When either is not a TCP address (nil, say) it is
// Local: the header of a connection the sender opened for itself, which is
// what a health probe sends.
func NewHeader(version int, src, dst net.Addr) *Header {
	h := &Header{Version: version}
	s, ok1 := src.(*net.TCPAddr)
	d, ok2 := dst.(*net.TCPAddr)
	if !ok1 || !ok2 || s == nil || d == nil {
		h.Local = true
		return h
	}
	h.Source, h.Dest = s, d
	return h
}

// Format encodes h: a Local header as "PROXY UNKNOWN" (v1) or the LOCAL
// command (v2); TLSVersion as a PP2_TYPE_SSL TLV with the client-SSL flag
// and the version (v2; v1 has no way to say it).
func (h *Header) Format() ([]byte, error) {
	if h.Version != 1 && h.Version != 2 {
		return nil, fmt.Errorf("PROXY protocol version %d: want 1 or 2", h.Version)
	}
	if h.Local || h.Source == nil || h.Dest == nil {
		return goproxyproto.HeaderProxyFromAddrs(byte(h.Version), nil, nil).Format()
	}
	gh := goproxyproto.HeaderProxyFromAddrs(byte(h.Version), h.Source, h.Dest)
	if h.TLSVersion != "" && h.Version == 2 {
		// Verify is non-zero: no client certificate was verified.
		tlv, err := tlvparse.PP2SSL{Client: tlvparse.PP2_BITFIELD_CLIENT_SSL, Verify: 1,
			TLV: []goproxyproto.TLV{{Type: goproxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte(h.TLSVersion)}}}.Marshal()
		if err != nil {
			return nil, err
		}
		if err := gh.SetTLVs([]goproxyproto.TLV{tlv}); err != nil {
			return nil, err
		}
	}
	return gh.Format()
}

// Format is NewHeader(version, src, dst).Format().
func Format(version int, src, dst net.Addr) ([]byte, error) {
	return NewHeader(version, src, dst).Format()
}

// Conn is a client connection that came through a balancer: RemoteAddr and
// LocalAddr report the client's address and the address it connected to,
// as the balancer's header said, everywhere the connection goes (a TLS
// server over it reports the same). NetConn is the accepted connection.
type Conn struct {
	net.Conn
	src, dst net.Addr
}

// NewConn returns c with h's addresses; for a LOCAL header it returns c
// itself, whose own addresses are the true ones.
func NewConn(c net.Conn, h *Header) net.Conn {
	if h.Local {
		return c
	}
	return &Conn{Conn: c, src: h.Source, dst: h.Dest}
}

// RemoteAddr is the client's address from the header.
func (c *Conn) RemoteAddr() net.Addr { return c.src }

// LocalAddr is the address the client connected to, from the header.
func (c *Conn) LocalAddr() net.Addr { return c.dst }

// NetConn returns the accepted connection, whose RemoteAddr is the
// balancer's. The relay unwraps to it so the kernel can splice.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// Unwrap returns the accepted connection under a *Conn, and c otherwise.
func Unwrap(c net.Conn) net.Conn {
	if pc, ok := c.(*Conn); ok {
		return pc.Conn
	}
	return c
}
