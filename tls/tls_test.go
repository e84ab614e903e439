package tls

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseMinVersion(t *testing.T) {
	for in, want := range map[string]uint16{"": tls.VersionTLS12, "1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13} {
		if got, err := ParseMinVersion(in); err != nil || got != want {
			t.Errorf("ParseMinVersion(%q) = %x, %v", in, got, err)
		}
	}
	if _, err := ParseMinVersion("1.0"); err == nil {
		t.Error("TLS 1.0 accepted")
	}
}

// TestReloadAndHandshake: a client trusting the CA file completes a
// STARTTLS-style handshake, and Reload swaps the certificate for new
// handshakes (a broken file keeps the old one).
func TestReloadAndHandshake(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, err := WriteSelfSigned(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	store, err := NewCertStore(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	first := store.cur.Load()
	handshake(t, store, certFile)

	if _, _, err := WriteSelfSigned(dir, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := store.Reload(); err != nil {
		t.Fatal(err)
	}
	if store.cur.Load() == first {
		t.Fatal("Reload kept the old certificate")
	}
	handshake(t, store, certFile)

	os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("garbage"), 0o644)
	before := store.cur.Load()
	if err := store.Reload(); err == nil {
		t.Fatal("Reload accepted a broken certificate")
	}
	if store.cur.Load() != before {
		t.Fatal("a failed Reload dropped the working certificate")
	}
}

func handshake(t *testing.T, store *CertStore, caFile string) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := Handshake(ctx, a, ServerConfig(store, 0), true)
		errc <- err
	}()
	cfg, err := ClientConfig("127.0.0.1:993", ClientOptions{CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion < tls.VersionTLS12 {
		t.Errorf("client MinVersion %x", cfg.MinVersion)
	}
	if _, err := Handshake(ctx, b, cfg, false); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}

func TestClientConfigErrors(t *testing.T) {
	if _, err := ClientConfig("no-port", ClientOptions{}); err == nil {
		t.Error("address without port accepted")
	}
	if _, err := ClientConfig("h:1", ClientOptions{CAFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil {
		t.Error("missing CA file accepted")
	}
	cfg, err := ClientConfig("mail.example:993", ClientOptions{ServerName: "imap.example"})
	if err != nil || cfg.ServerName != "imap.example" {
		t.Errorf("ServerName override: %v %v", cfg, err)
	}
}
