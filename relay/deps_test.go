package relay_test

import (
	"go/build"
	"slices"
	"strings"
	"testing"
)

// TestImports keeps the import arrows pointing down: the codec needs only
// pki, and the server only the codec, pki, wire's CRLY header and the rate
// limiter. In
// particular neither may import the overlay or the node that uses them.
func TestImports(t *testing.T) {
	const mod = "github.com/korium/korium-tun/"
	for dir, allowed := range map[string][]string{
		".":      {"pki"},
		"server": {"pki", "relay", "wire", "internal/ratelimit"},
		"client": {"pki", "relay"},
	} {
		pkg, err := build.ImportDir(dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range pkg.Imports {
			if !strings.Contains(imp, ".") {
				continue // standard library
			}
			rel, ok := strings.CutPrefix(imp, mod)
			if !ok || !slices.Contains(allowed, rel) {
				t.Errorf("relay/%s imports %s; allowed: standard library and %v", dir, imp, allowed)
			}
		}
	}
}
