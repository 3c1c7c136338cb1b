package dht

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the dht package below the network: standard library,
// pki, smartaddr, internal/addrpolicy (a standard-library-only leaf), wire
// (formats only: the address codec and the bounded reader) and blake3 only
// (no quic-go, smartsock, rpc or overlay).
func TestImports(t *testing.T) {
	allowed := map[string]bool{
		"github.com/korium/korium-tun/pki":                 true,
		"github.com/korium/korium-tun/smartaddr":           true,
		"github.com/korium/korium-tun/internal/addrpolicy": true,
		"github.com/korium/korium-tun/wire":                true,
		"lukechampine.com/blake3":                          true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			stdlib := !strings.Contains(strings.SplitN(p, "/", 2)[0], ".")
			if !stdlib && !allowed[p] {
				t.Errorf("%s imports %s; dht may import only the standard library, pki, smartaddr, internal/addrpolicy, wire and blake3", f, p)
			}
		}
	}
}
