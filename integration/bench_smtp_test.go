package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"mailproxy/proxy"
	"mailproxy/proxy/config"
)

// benchSMTPConfig is mailproxy with one SMTP listener in front of one
// backend, defaults otherwise.
const benchSMTPConfig = `
[admin]
listen = ""

[limits]
max_connections_per_ip = 100000
max_connections = 100000

[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:1"
pool = "main"

[[pool]]
name = "main"

[pool.health]
interval = "1h"

[[pool.backend]]
name = "mail1"
smtp = %q
`

// BenchmarkSMTPMessage is one message of 10 KiB per session (connect,
// EHLO, MAIL, RCPT, DATA, QUIT, as bench/peers.sh's SMTP row), 8 sessions
// at a time, against a fake backend that answers from a script and
// discards the message: cpu-ns/op, proxy minus direct, is what mailproxy
// costs per message.
//
//	go test -run '^$' -bench SMTPMessage -cpuprofile cpu.prof ./integration/
func BenchmarkSMTPMessage(b *testing.B) {
	back := startFakeSMTP(b)
	cfg, err := config.Parse(fmt.Appendf(nil, benchSMTPConfig, back), b.Name())
	if err != nil {
		b.Fatalf("config: %v", err)
	}
	srv, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Handlers: handlers()})
	if err != nil {
		b.Fatalf("proxy.New: %v", err)
	}
	srv.StartBackground()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve("smtp", ln) }()
	b.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, proxy.ErrServerClosed) {
			b.Errorf("Serve: %v", err)
		}
	})
	msg := string(benchMessage(10<<10-2)) + "\r\n.\r\n" // 10 KiB, dot-terminated
	for _, p := range paths(back, ln.Addr().String()) {
		b.Run("path="+p.name, func(b *testing.B) {
			b.SetParallelism(4) // 8 sessions at a time on 2 cores
			cpu := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := smtpOnce(p.addr, msg); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportCPU(b, cpu)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// smtpOnce sends msg (dot-terminated) in a session of its own.
func smtpOnce(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	for _, s := range [][2]string{
		{"", "220 "}, {"EHLO bench.example\r\n", "250 "}, {"MAIL FROM:<a@example.test>\r\n", "250"},
		{"RCPT TO:<b@example.test>\r\n", "250"}, {"DATA\r\n", "354"}, {msg, "250"}, {"QUIT\r\n", "221"},
	} {
		if s[0] != "" {
			if _, err := io.WriteString(c, s[0]); err != nil {
				return err
			}
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("waiting for %q: %w", s[1], err)
			}
			if strings.HasPrefix(line, s[1]) {
				break
			}
			if len(line) < 4 || line[3] != '-' {
				return fmt.Errorf("waiting for %q: %q", s[1], line)
			}
		}
	}
	return nil
}

// startFakeSMTP serves a scripted SMTP backend on 127.0.0.1:0 that
// accepts every message and keeps none.
func startFakeSMTP(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go fakeSMTPSession(c)
		}
	}()
	return ln.Addr().String()
}

func fakeSMTPSession(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(c)
	io.WriteString(c, "220 fake ESMTP\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		reply := "250 2.0.0 Ok\r\n"
		switch verb {
		case "EHLO":
			reply = "250-fake\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
		case "DATA":
			io.WriteString(c, "354 End data with <CR><LF>.<CR><LF>\r\n")
			for {
				l, err := r.ReadSlice('\n')
				if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
					return
				}
				if bytes.Equal(l, []byte(".\r\n")) {
					break
				}
			}
			reply = "250 2.0.0 Ok: queued\r\n"
		case "QUIT":
			io.WriteString(c, "221 2.0.0 Bye\r\n")
			return
		}
		if _, err := io.WriteString(c, reply); err != nil {
			return
		}
	}
}
