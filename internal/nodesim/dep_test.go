package nodesim

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the simulation to the real protocol code and its own
// network: it may import dht, dht/simnet, gossipsub and pki (and the
// standard library), never the node's transport (quic-go, smartsock, rpc,
// overlay), which it models.
func TestImports(t *testing.T) {
	allowed := map[string]bool{
		"github.com/korium/korium-tun/dht":        true,
		"github.com/korium/korium-tun/dht/simnet": true,
		"github.com/korium/korium-tun/gossipsub":  true,
		"github.com/korium/korium-tun/pki":        true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			stdlib := !strings.Contains(strings.SplitN(p, "/", 2)[0], ".")
			if !stdlib && !allowed[p] {
				t.Errorf("%s imports %s; nodesim may import only dht, dht/simnet, gossipsub, pki and the standard library", f, p)
			}
		}
	}
}

// TestNothingImportsNodesim: the simulation is a measuring tool; no package
// of the node may depend on it.
func TestNothingImportsNodesim(t *testing.T) {
	root := filepath.Join("..", "..")
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "third_party" || d.Name() == ".git" || path == ".") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		af, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range af.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p == "github.com/korium/korium-tun/internal/nodesim" {
				t.Errorf("%s imports the simulation", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
