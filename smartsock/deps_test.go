package smartsock

import (
	"go/build"
	"slices"
	"strings"
	"testing"
)

// TestImports keeps the arrows pointing down: smartsock sits on pki,
// smartaddr, wire and two internal leaves (and quic-go, for the connection
// ID generator); simnet on nothing of ours. Neither may import the relay,
// the DHT or the overlay.
func TestImports(t *testing.T) {
	const mod = "github.com/korium/korium-tun/"
	for dir, allowed := range map[string][]string{
		".":      {"pki", "smartaddr", "wire", "internal/ratelimit", "internal/udpbatch", "internal/grid", "third_party/quic-go"},
		"simnet": {},
	} {
		pkg, err := build.ImportDir(dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range pkg.Imports {
			if !strings.Contains(strings.Split(imp, "/")[0], ".") || strings.HasPrefix(imp, "golang.org/x/") {
				continue // standard library, x/net, x/sys
			}
			if rel, ok := strings.CutPrefix(imp, mod); !ok || !slices.Contains(allowed, rel) {
				t.Errorf("smartsock/%s imports %s; allowed: standard library, golang.org/x and %v", dir, imp, allowed)
			}
		}
	}
}
