package layering

import (
	"go/build"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// allowed lists, for each room, the project packages it may import
// (besides the standard library and third-party modules).
var allowed = map[string][]string{
	"internal/ip6":   nil,
	"internal/group": nil,
	"internal/grid":  nil,
	"peers":          {"pki", "smartaddr", "third_party/quic-go", "internal/group"},
	"datapath":       {"peers", "firewall", "internal/ip6", "smartaddr", "third_party/quic-go", "internal/group"},
	"firewall":       {"pki", "smartaddr"},
	// The simulation runs the real protocol code over its own network,
	// never the node's transport (quic-go, smartsock, rpc, overlay).
	"internal/nodesim": {"dht", "dht/simnet", "gossipsub", "pki"},
	"nat":              {"peers", "pki", "smartsock", "relay", "relay/client", "relay/server", "rpc", "internal/addrpolicy", "internal/ratelimit", "internal/group", "internal/grid"},
}

func TestImportsPointDown(t *testing.T) {
	const mod = "github.com/korium/korium-tun/"
	for dir, ok := range allowed {
		pkg, err := build.ImportDir(filepath.Join("..", "..", dir), 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range pkg.Imports {
			rel, ours := strings.CutPrefix(imp, mod)
			if ours && !slices.Contains(ok, rel) {
				t.Errorf("%s imports %s; it may import only %v of this project", dir, rel, ok)
			}
		}
	}
}
