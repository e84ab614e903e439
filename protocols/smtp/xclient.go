package smtp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// maxCommand is the longest command line, without CRLF (RFC 5321
// §4.5.3.1.4). Postfix holds XCLIENT to it.
const maxCommand = 510

// attr is one XCLIENT attribute and its raw (not yet xtext) value.
type attr struct{ name, value string }

// clientAttrs describes the client for XCLIENT: its address and port, the
// address it connected to, and its HELO name. NAME comes from clientName,
// asked only of a backend that takes it. LOGIN is left out: in passthrough
// mode the backend sees the client's AUTH itself and must not take
// mailproxy's word for it.
func clientAttrs(client, local net.Addr, helo string) []attr {
	addr, port := xclientAddr(client)
	dest, dport := xclientAddr(local)
	return []attr{
		{"ADDR", addr}, {"PORT", port}, {"PROTO", "ESMTP"}, {"HELO", helo},
		{"DESTADDR", dest}, {"DESTPORT", dport},
	}
}

// xclientAddr splits an address into XCLIENT form: an IPv4 address as is,
// an IPv6 one with the "IPV6:" prefix, no zone.
func xclientAddr(a net.Addr) (string, string) {
	if a == nil {
		return "", ""
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "", ""
	}
	host, _, _ = strings.Cut(host, "%")
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return "", port
	case ip.To4() != nil:
		return ip.To4().String(), port
	}
	return "IPV6:" + ip.String(), port
}

// xclientCommands builds the XCLIENT command lines for a backend that
// announced the attribute names supported. Attributes it did not announce,
// and empty values, are left out; a value too long for one command becomes
// [UNAVAILABLE]; the rest is packed into as few commands of at most
// maxCommand octets as fit. No command means nothing to send.
func xclientCommands(supported []string, attrs []attr) []string {
	var cmds []string
	cur := "XCLIENT"
	for _, a := range attrs {
		if a.value == "" || !slices.ContainsFunc(supported, func(s string) bool { return strings.EqualFold(s, a.name) }) {
			continue
		}
		kv := a.name + "=" + xtext(a.value)
		if len("XCLIENT ")+len(kv) > maxCommand {
			kv = a.name + "=[UNAVAILABLE]"
		}
		if len(cur)+1+len(kv) > maxCommand {
			cmds = append(cmds, cur)
			cur = "XCLIENT"
		}
		cur += " " + kv
	}
	if cur != "XCLIENT" {
		cmds = append(cmds, cur)
	}
	return cmds
}

// xtext encodes s as RFC 3461 §4 xtext: every byte outside "!" to "~", and
// "+" and "=", becomes "+" and two upper-case hex digits.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "+%02X", c)
	}
	return b.String()
}

// The NAME values Postfix knows for a client without a verified name
// (XCLIENT_README): none, or the lookup failed for now.
const (
	nameUnavailable = "[UNAVAILABLE]"
	nameTempFail    = "[TEMPUNAVAIL]"
)

// maxNameLookup bounds the reverse lookup of a client's address; the
// lookup also gets at most half of what is left of the backend's budget,
// so that a slow DNS is never blamed on the backend.
const maxNameLookup = 5 * time.Second

// clientName is what Postfix itself would log for a direct client: the
// first name that the address's PTR records give and that resolves back to
// the address, else [UNAVAILABLE], or [TEMPUNAVAIL] when DNS did not
// answer in time. Postfix trusts NAME as given, so only a forward-confirmed
// name is passed on.
func clientName(ctx context.Context, r *net.Resolver, addr net.Addr) string {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return nameUnavailable
	}
	timeout := maxNameLookup
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl)/2)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	names, err := r.LookupAddr(ctx, ta.IP.String())
	if err != nil {
		return lookupFailure(err)
	}
	for _, n := range names[:min(len(names), 4)] {
		ips, err := r.LookupIPAddr(ctx, n)
		if err != nil {
			if lookupFailure(err) == nameTempFail {
				return nameTempFail
			}
			continue
		}
		for _, ip := range ips {
			if ip.IP.Equal(ta.IP) {
				return strings.TrimSuffix(n, ".")
			}
		}
	}
	return nameUnavailable
}

// lookupFailure says which NAME a failed lookup gives: [UNAVAILABLE] when
// there is no such name, [TEMPUNAVAIL] when DNS may answer later.
func lookupFailure(err error) string {
	var de *net.DNSError
	if errors.As(err, &de) && de.IsNotFound {
		return nameUnavailable
	}
	return nameTempFail
}
