package integration

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestLayout holds the package layout of DESIGN.md: the children of proxy
// that must not import it do not, proxy/config imports no server code
// (only routing, for the routing key), and the top level holds only the
// design card's folders and the tooling folders.
func TestLayout(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	deps := func(pkg string) []string {
		t.Helper()
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		return strings.Fields(string(out))
	}
	for _, pkg := range []string{"mailproxy/proxy/peer", "mailproxy/proxy/admin", "mailproxy/proxy/config", "mailproxy/proxy/auth"} {
		if slices.Contains(deps(pkg), "mailproxy/proxy") {
			t.Errorf("%s imports mailproxy/proxy", pkg)
		}
	}
	for _, d := range deps("mailproxy/proxy/config") {
		if strings.HasPrefix(d, "mailproxy/") && d != "mailproxy/proxy/config" && d != "mailproxy/routing" {
			t.Errorf("proxy/config imports %s", d)
		}
	}
	allowed := []string{"cmd", "proxy", "protocols", "routing", "tls", "integration", "bench", "internal", "testdata"}
	entries, err := os.ReadDir("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") && !slices.Contains(allowed, e.Name()) {
			t.Errorf("top-level folder %s is not on the design card", e.Name())
		}
	}
}
