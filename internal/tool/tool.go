// Package tool is the command line the test tools under internal/ share:
// NAME SUBCOMMAND [flags], a usage line for a missing or unknown
// subcommand, and one line on stderr when something fails.
package tool

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Args returns the subcommand (os.Args[1], one of subs) and an empty flag
// set for it; the caller defines its flags and calls fs.Parse(os.Args[2:]).
// A missing or unknown subcommand ends the program with the usage line.
func Args(name string, subs ...string) (string, *flag.FlagSet) {
	if len(os.Args) < 2 || !slices.Contains(subs, os.Args[1]) {
		Fail(name, errors.New("usage: "+name+" "+strings.Join(subs, "|")+" [flags]"))
	}
	return os.Args[1], flag.NewFlagSet(name+" "+os.Args[1], flag.ExitOnError)
}

// Fail prints "name: err" on stderr and exits with status 1.
func Fail(name string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	os.Exit(1)
}
