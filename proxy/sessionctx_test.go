package proxy

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestSessionCtx: cancel closes Done, sets Err, runs what AfterFunc
// registered (and not stopped), and children made with the context
// package are cancelled with it.
func TestSessionCtx(t *testing.T) {
	ctx, cancel := newSessionCtx()
	child, stopChild := context.WithTimeout(ctx, time.Hour)
	defer stopChild()
	ran := make(chan string, 3)
	context.AfterFunc(ctx, func() { ran <- "context.AfterFunc" })
	ctx.AfterFunc(func() { ran <- "direct" })
	stop := ctx.AfterFunc(func() { ran <- "stopped" })
	if !stop() || stop() {
		t.Fatal("stop: want true once, then false")
	}
	if ctx.Err() != nil {
		t.Fatal("Err before cancel")
	}
	cancel()
	cancel()
	select {
	case <-ctx.Done():
	default:
		t.Fatal("Done not closed by cancel")
	}
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatalf("Err = %v", ctx.Err())
	}
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("child not cancelled")
	}
	got := map[string]bool{}
	for range 2 {
		select {
		case s := <-ran:
			got[s] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("AfterFunc did not run: %v", got)
		}
	}
	if !got["context.AfterFunc"] || !got["direct"] {
		t.Fatalf("ran %v", got)
	}
	// Registered after cancel: runs at once.
	ctx.AfterFunc(func() { ran <- "late" })
	select {
	case s := <-ran:
		if s != "late" {
			t.Fatalf("ran %q after cancel, want late", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc after cancel did not run")
	}
}
