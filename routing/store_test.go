package routing

import (
	"fmt"
	"testing"
)

// storeProtocols serve every protocol; LMTP and ManageSieve have IMAP's
// sticky policy, as the proxy configures them.
var storeProtocols = [numProtocols]bool{true, true, true, true, true}

// TestStoreProtocolsFollowIMAP: an LMTP delivery and a ManageSieve login
// go where an IMAP login of the same user goes, with and without a live
// IMAP session, and a live LMTP delivery holds the user for IMAP too.
func TestStoreProtocolsFollowIMAP(t *testing.T) {
	var backends []BackendSpec
	for i := range 3 {
		backends = append(backends, BackendSpec{Name: fmt.Sprintf("b%d", i), Weight: 1, Serves: storeProtocols})
	}
	p, _ := newPool(t, Options{Policies: [numProtocols]Policy{Sticky, RoundRobin, RoundRobin, Sticky, Sticky}}, backends)
	for i := range 1000 {
		user := fmt.Sprintf("user%d@example.org", i)
		want := hashPick(p, IMAP, user)
		for _, proto := range []Protocol{LMTP, ManageSieve} {
			l := acquire(t, p, proto, user)
			if l.Backend != want {
				t.Fatalf("%s %s: %s, IMAP hash says %s", proto, user, l.Backend.Name, want.Name)
			}
			l.Release()
		}
	}
	// Live IMAP sessions placed while b2 takes nobody new, then b2 back:
	// hashing now says b2 for about a third, the live sessions say otherwise.
	p.SetWeight(p.Backend("b2"), 0)
	var live []*Lease
	for i := range 1000 {
		live = append(live, acquire(t, p, IMAP, fmt.Sprintf("user%d@example.org", i)))
	}
	p.SetWeight(p.Backend("b2"), 1)
	moved := 0
	for _, imap := range live {
		if hashPick(p, IMAP, imap.User) != imap.Backend {
			moved++
		}
		for _, proto := range []Protocol{LMTP, ManageSieve} {
			l := acquire(t, p, proto, imap.User)
			if l.Backend != imap.Backend {
				t.Fatalf("%s %s: %s, live IMAP session on %s", proto, imap.User, l.Backend.Name, imap.Backend.Name)
			}
			l.Release()
		}
		imap.Release()
	}
	if moved < 200 {
		t.Fatalf("only %d of 1000 users hash elsewhere than their live session: the test shows nothing", moved)
	}
}

// TestDeliveryHoldsUser: while a delivery holds a user on a backend, an
// IMAP login goes there even when hashing says otherwise.
func TestDeliveryHoldsUser(t *testing.T) {
	var backends []BackendSpec
	for i := range 2 {
		backends = append(backends, BackendSpec{Name: fmt.Sprintf("b%d", i), Weight: 1, Serves: storeProtocols})
	}
	p, _ := newPool(t, Options{Policies: [numProtocols]Policy{Sticky, RoundRobin, RoundRobin, Sticky, Sticky}}, backends)
	user := "alice@example.org"
	home := hashPick(p, IMAP, user)
	other := p.Backend("b0")
	if other == home {
		other = p.Backend("b1")
	}
	p.SetWeight(home, 0)
	d := acquire(t, p, LMTP, user)
	if d.Backend != other {
		t.Fatalf("delivery on %s, want %s", d.Backend.Name, other.Name)
	}
	p.SetWeight(home, 1)
	l := acquire(t, p, IMAP, user)
	if l.Backend != other {
		t.Fatalf("IMAP login during the delivery on %s, want %s (the delivery's)", l.Backend.Name, other.Name)
	}
	l.Release()
	d.Release()
}
