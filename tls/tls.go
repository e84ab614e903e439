// Package tls holds mailproxy's TLS plumbing: the server certificate (a
// config reload reads it again), server and client configs with safe defaults, the
// STARTTLS upgrade, and throwaway certificates for tests and the demo.
// Import it as mtls.
package tls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// CertStore holds the server certificate and swaps it atomically on Reload,
// so a renewed certificate takes effect for new handshakes without a restart.
type CertStore struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// NewCertStore loads the PEM certificate chain and key.
func NewCertStore(certFile, keyFile string) (*CertStore, error) {
	s := &CertStore{certFile: certFile, keyFile: keyFile}
	return s, s.Reload()
}

// StaticCertStore serves one certificate that never reloads.
func StaticCertStore(c tls.Certificate) *CertStore {
	s := &CertStore{}
	s.cur.Store(&c)
	return s
}

// Reload reads the files again. On error the old certificate stays.
func (s *CertStore) Reload() error {
	if s.certFile == "" {
		return nil
	}
	c, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		return fmt.Errorf("load certificate %s: %w", s.certFile, err)
	}
	s.cur.Store(&c)
	return nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (s *CertStore) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}

// ParseMinVersion maps "1.2" and "1.3" to the tls constants; "" is 1.2.
func ParseMinVersion(v string) (uint16, error) {
	switch v {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("unsupported TLS min_version %q (want 1.2 or 1.3)", v)
}

// ServerConfig returns the config for client-facing TLS: certificates from
// store, TLS 1.2 at least (minVersion 0), Go's default cipher suites.
func ServerConfig(store *CertStore, minVersion uint16) *tls.Config {
	return &tls.Config{
		GetCertificate: store.GetCertificate,
		MinVersion:     max(minVersion, tls.VersionTLS12),
	}
}

// ClientOptions configure TLS towards a backend.
type ClientOptions struct {
	ServerName string // default: the host part of the backend address
	SkipVerify bool   // for backends with self-signed certificates on a trusted network
	CAFile     string // PEM roots; default the system pool
}

// ClientConfig returns the config for backend-facing TLS to addr.
func ClientConfig(addr string, o ClientOptions) (*tls.Config, error) {
	name := o.ServerName
	if name == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		name = host
	}
	cfg := &tls.Config{ServerName: name, InsecureSkipVerify: o.SkipVerify, MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pemData, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read tls_ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("tls_ca %s: no certificate found", o.CAFile)
		}
	}
	return cfg, nil
}

// ErrHandshake wraps every error of Handshake: the peer may be in the
// middle of a TLS handshake, so nothing more may be said to it in plain
// text.
var ErrHandshake = errors.New("tls handshake")

// Handshake runs a TLS handshake on conn (server side when cfg has
// certificates for it, as chosen by server) bounded by ctx. It is the
// second half of STARTTLS; the caller must already have thrown away every
// byte it buffered before the upgrade. Its errors wrap ErrHandshake.
func Handshake(ctx context.Context, conn net.Conn, cfg *tls.Config, server bool) (*tls.Conn, error) {
	var tc *tls.Conn
	if server {
		tc = tls.Server(conn, cfg)
	} else {
		tc = tls.Client(conn, cfg)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	return tc, nil
}

// SelfSigned makes a throwaway ECDSA certificate for hosts (names or IPs)
// valid for a day, and a pool that trusts it. For tests and the demo only.
func SelfSigned(hosts ...string) (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "mailproxy test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}

// WriteSelfSigned writes a SelfSigned certificate for hosts as cert.pem and
// key.pem into dir and returns their paths.
func WriteSelfSigned(dir string, hosts ...string) (certFile, keyFile string, err error) {
	c, _, err := SelfSigned(hosts...)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := errors.Join(os.WriteFile(certFile, certPEM, 0o644), os.WriteFile(keyFile, keyPEM, 0o600)); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}
