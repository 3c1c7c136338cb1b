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
		// The package's own external tests (package nodesim_test) are
		// the simulation, not the node.
		if d.IsDir() || !strings.HasSuffix(path, ".go") || filepath.Dir(path) == filepath.Join(root, "internal", "nodesim") {
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
