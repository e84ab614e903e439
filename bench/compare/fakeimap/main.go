// Command fakeimap is the backend of bench/compare: an IMAP server that
// costs next to nothing, so that what a benchmark measures is the proxy in
// front of it. Every login succeeds; the one mailbox has one message of
// -size bytes, and a FETCH of any kind returns it as a literal in one write.
//
// It understands what the three proxies send it: LOGIN with quoted atoms or
// synchronising literals (nginx sends "LOGIN {n}" and waits for "+"),
// AUTHENTICATE PLAIN with or without an initial response (mailproxy), ID,
// CAPABILITY, NOOP, SELECT, FETCH, IDLE (until DONE) and LOGOUT. It is the same idea as the
// fake in integration/bench_test.go, as a process of its own so that its
// CPU time can be told apart from the proxy's.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
)

const greeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID] fake ready\r\n"

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	size := flag.Int("size", 1<<20, "size of the one message, bytes")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fetch := fmt.Appendf(nil, "* 1 FETCH (BODY[] {%d}\r\n", *size)
	fetch = append(fetch, bytes.Repeat([]byte{'x'}, *size)...)
	fetch = append(fetch, ")\r\n"...)
	fmt.Printf("listening %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c, fetch)
	}
}

// readCommand reads one command, following literals: a line ending in
// {n} (synchronising: answered with "+") or {n+} continues after n bytes.
func readCommand(c net.Conn, r *bufio.Reader) (string, error) {
	var cmd strings.Builder
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		line = strings.TrimRight(line, "\r\n")
		n, sync, ok := literal(line)
		if !ok {
			cmd.WriteString(line)
			return cmd.String(), nil
		}
		cmd.WriteString(line[:strings.LastIndexByte(line, '{')])
		if sync {
			if _, err := io.WriteString(c, "+ go ahead\r\n"); err != nil {
				return "", err
			}
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		cmd.WriteString(strconv.Quote(string(buf)))
	}
}

func literal(line string) (n int, sync, ok bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false, false
	}
	open := strings.LastIndexByte(line, '{')
	if open < 0 {
		return 0, false, false
	}
	num := line[open+1 : len(line)-1]
	sync = !strings.HasSuffix(num, "+")
	n, err := strconv.Atoi(strings.TrimSuffix(num, "+"))
	if err != nil || n < 0 || n > 1<<16 {
		return 0, false, false
	}
	return n, sync, true
}

func serve(c net.Conn, fetch []byte) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 512)
	if _, err := io.WriteString(c, greeting); err != nil {
		return
	}
	for {
		line, err := readCommand(c, r)
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(line, " ")
		verb, args, _ := strings.Cut(rest, " ")
		verb = strings.ToUpper(verb)
		out := net.Buffers{}
		switch verb {
		case "CAPABILITY":
			out = append(out, []byte("* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID\r\n"))
		case "ID":
			out = append(out, []byte("* ID NIL\r\n"))
		case "SELECT", "EXAMINE":
			out = append(out, []byte("* 1 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"))
		case "FETCH", "UID":
			out = append(out, fetch)
		case "AUTHENTICATE":
			if !strings.Contains(args, " ") { // no initial response: ask for it
				if _, err := io.WriteString(c, "+ \r\n"); err != nil {
					return
				}
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
			}
		case "IDLE":
			// Until the client's DONE; the reply below ends the IDLE.
			if _, err := io.WriteString(c, "+ idling\r\n"); err != nil {
				return
			}
			if line, err := r.ReadString('\n'); err != nil || !strings.EqualFold(strings.TrimSpace(line), "DONE") {
				return
			}
		case "LOGOUT":
			io.WriteString(c, "* BYE\r\n"+tag+" OK LOGOUT completed\r\n")
			return
		}
		switch verb {
		case "LOGIN", "AUTHENTICATE":
			out = append(out, []byte(tag+" OK [CAPABILITY IMAP4rev1 ID] Logged in\r\n"))
		default:
			out = append(out, []byte(tag+" OK "+verb+" completed\r\n"))
		}
		if _, err := out.WriteTo(c); err != nil {
			return
		}
	}
}
