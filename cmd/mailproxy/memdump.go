//go:build memdump

package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"syscall"
)

// startMemDump is for measuring, in binaries built with -tags memdump
// (bench/idle.sh): on SIGUSR1 the process writes one line to stderr,
// "MEMDUMP name=value ...", with the runtime's memory classes and
// goroutine and object counts; on SIGUSR2 a heap profile to
// $MAILPROXY_HEAPPROFILE (default heap.pprof) with a number appended.
// Release builds have neither (memdump_off.go).
func startMemDump() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		n := 0
		for sig := range sigs {
			if sig == syscall.SIGUSR1 {
				fmt.Fprintln(os.Stderr, memLine())
				continue
			}
			n++
			name := os.Getenv("MAILPROXY_HEAPPROFILE")
			if name == "" {
				name = "heap.pprof"
			}
			if f, err := os.Create(fmt.Sprintf("%s.%d", name, n)); err == nil {
				pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
	}()
}

// memLine reads every uint64 metric about memory, goroutines and objects.
func memLine() string {
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if d.Kind != metrics.KindUint64 || d.Cumulative {
			continue
		}
		if strings.HasPrefix(d.Name, "/memory/classes/") || strings.HasPrefix(d.Name, "/sched/goroutines") ||
			strings.HasPrefix(d.Name, "/gc/heap/objects") || strings.HasPrefix(d.Name, "/gc/scan/") {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(samples)
	var b strings.Builder
	b.WriteString("MEMDUMP")
	for _, s := range samples {
		fmt.Fprintf(&b, " %s=%d", s.Name, s.Value.Uint64())
	}
	return b.String()
}
