package smtp

import (
	"fmt"
	"net"
	"slices"
	"strings"
)

// maxCommand is the longest command line, without CRLF (RFC 5321
// §4.5.3.1.4). Postfix holds XCLIENT to it.
const maxCommand = 510

// attr is one XCLIENT attribute and its raw (not yet xtext) value.
type attr struct{ name, value string }

// clientAttrs describes the client for XCLIENT: its address and port, the
// address it connected to, and its HELO name. NAME is left out (mailproxy
// does no reverse lookup, and Postfix does its own only for a direct
// client), LOGIN too: in passthrough mode the backend sees the client's AUTH
// itself and must not take mailproxy's word for it.
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
