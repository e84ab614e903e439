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

// TestSessionCtxForgetDone: after the login phase the Done channel is
// dropped, and the context still works: a later Done is closed by
// cancel, AfterFunc still runs, and Done after cancel is closed at once.
func TestSessionCtxForgetDone(t *testing.T) {
	ctx, cancel := newSessionCtx()
	login := ctx.Done()
	ctx.forgetDone()
	if ctx.done != nil {
		t.Fatal("forgetDone kept the channel")
	}
	ran := make(chan struct{})
	ctx.AfterFunc(func() { close(ran) })
	later := ctx.Done()
	if later == login {
		t.Fatal("Done after forgetDone returned the old channel")
	}
	cancel()
	for name, ch := range map[string]<-chan struct{}{"later Done": later, "AfterFunc": ran} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s not closed by cancel", name)
		}
	}
	ctx.forgetDone() // after cancel: a no-op
	select {
	case <-ctx.Done():
	default:
		t.Fatal("Done after cancel and forgetDone not closed")
	}
}
