package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// version is set by a release build (-ldflags "-X main.version=v1.2.3");
// otherwise it comes from the build info: the module version for
// `go install ...@v1.2.3`, a VCS pseudo-version or "(devel)" for `go build`.
var version = ""

// buildInfo is what `korium-tun version` prints: the version, the VCS
// commit the binary was built from (with "+dirty" for uncommitted changes)
// and the Go toolchain.
type buildInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Go      string `json:"go"`
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Commit: "unknown", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if b.Version == "" {
			b.Version = "(devel)"
		}
		return b
	}
	if b.Version == "" {
		b.Version = bi.Main.Version
	}
	if b.Version == "" {
		b.Version = "(devel)"
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && b.Commit != "unknown" {
		b.Commit += "+dirty"
	}
	return b
}

func (b buildInfo) String() string {
	return fmt.Sprintf("korium-tun %s (commit %s, %s)", b.Version, b.Commit, b.Go)
}

func versionCommand(stdout io.Writer, jsonFlag cli.Flag) *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version and the commit this binary was built from",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			b := readBuildInfo()
			if c.Bool("json") {
				return printIndented(stdout, b)
			}
			_, err := fmt.Fprintln(stdout, b)
			return err
		},
	}
}
