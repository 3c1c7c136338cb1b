package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/korium/korium-tun/internal/config"
	"github.com/korium/korium-tun/overlay"
)

// defaultConfigPath is read by `up` when it exists and --config is not given.
const defaultConfigPath = "/etc/korium-tun/config.yaml"

// configFlag is up's --config; it has no key of its own.
const configFlag = "config"

// keyName is the config key of a flag: its name in snake_case.
func keyName(flag string) string { return strings.ReplaceAll(flag, "-", "_") }

// configKeys derives the config keys from up's flags, so a flag added to
// `up` has a key without further work. A flag of a type the config cannot
// express is a programming error (TestEveryUpFlagHasAConfigKey).
func configKeys(flags []cli.Flag) ([]config.Key, error) {
	var keys []config.Key
	for _, f := range flags {
		name := f.Names()[0]
		if name == configFlag {
			continue
		}
		k := config.Key{Name: keyName(name)}
		if u, ok := f.(cli.DocGenerationFlag); ok {
			k.Usage = u.GetUsage()
		}
		switch f := f.(type) {
		case *cli.StringFlag:
			k.Kind = config.String
			if f.Value != "" {
				k.Default = []string{f.Value}
			}
		case *cli.IntFlag:
			k.Kind, k.Default = config.Int, []string{fmt.Sprint(f.Value)}
		case *cli.BoolFlag:
			k.Kind, k.Default = config.Bool, []string{fmt.Sprint(f.Value)}
		case *cli.StringSliceFlag:
			k.Kind = config.List
			if f.Value != nil {
				k.Default = f.Value.Value()
			}
		case *cli.DurationFlag:
			k.Kind, k.Default = config.String, []string{f.Value.String()}
		case *cli.Int64Flag:
			k.Kind, k.Default = config.Int, []string{fmt.Sprint(f.Value)}
		case *cli.UintFlag:
			k.Kind, k.Default = config.Int, []string{fmt.Sprint(f.Value)}
		case *cli.Uint64Flag:
			k.Kind, k.Default = config.Int, []string{fmt.Sprint(f.Value)}
		case *cli.Float64Flag:
			k.Kind, k.Default = config.String, []string{fmt.Sprint(f.Value)}
		case *cli.PathFlag:
			k.Kind = config.String
			if f.Value != "" {
				k.Default = []string{f.Value}
			}
		default:
			return nil, fmt.Errorf("flag --%s of type %T has no config key kind", name, f)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// flagValidators check a value from the config file as up checks its flag,
// so a bad value is refused with the file, line and key.
var flagValidators = map[string]func(string) error{
	"mtu": func(v string) error {
		var mtu int
		fmt.Sscan(v, &mtu)
		if mtu < overlay.MinMTU || mtu > overlay.MaxMTU {
			return fmt.Errorf("%s is out of range %d..%d", v, overlay.MinMTU, overlay.MaxMTU)
		}
		return nil
	},
	"pow-bits": func(v string) error {
		var bits int
		fmt.Sscan(v, &bits)
		return stripFlag(checkPoWFlag(bits))
	},
	"log-level": func(v string) error { _, err := parseLevel(v); return stripFlag(err) },
	"bootstrap": func(v string) error { _, err := overlay.ParseContact(v); return err },
	"listen":    checkHostPort,
	"metrics":   func(v string) error { return checkOptionalHostPort(v, "") },
	"dns":       func(v string) error { return checkOptionalHostPort(v, "off") },
	"tun": func(v string) error {
		if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ \t") {
			return fmt.Errorf("%q: want an interface name of 1-15 characters", v)
		}
		return nil
	},
}

func checkHostPort(v string) error {
	if _, _, err := net.SplitHostPort(v); err != nil {
		return fmt.Errorf("%q: want HOST:PORT", v)
	}
	return nil
}

// checkOptionalHostPort accepts HOST:PORT, "" (the default) or off.
func checkOptionalHostPort(v, off string) error {
	if v == "" || v == off {
		return nil
	}
	return checkHostPort(v)
}

// stripFlag turns "--mtu 9000 is out of range" into "9000 is out of range"
// for messages that name the key instead.
func stripFlag(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "--") {
		if _, rest, ok := strings.Cut(msg, " "); ok {
			msg = rest
		}
	}
	return errors.New(msg)
}

// upConfig is the config file behind one `up`: what it set and where.
type upConfig struct {
	path    string          // "" when up runs without a file
	cmdline map[string]bool // flags given on the command line: they win over the file
	origin  map[string]string
	keys    []config.Key
	flags   []cli.Flag
}

// optName names where an option's value came from, for an error message:
// "--metrics" or "/etc/korium-tun/config.yaml:7: metrics".
func (u *upConfig) optName(flag string) string {
	if u != nil {
		if o, ok := u.origin[flag]; ok {
			return o
		}
	}
	return "--" + flag
}

// loadUpConfig reads up's config file (--config, or the default path when
// it exists) and sets every flag the command line did not.
func loadUpConfig(c *cli.Context, flags []cli.Flag) (*upConfig, error) {
	keys, err := configKeys(flags)
	if err != nil {
		return nil, err
	}
	u := &upConfig{cmdline: map[string]bool{}, origin: map[string]string{}, keys: keys, flags: flags}
	for _, f := range flags {
		if n := f.Names()[0]; c.IsSet(n) {
			u.cmdline[n] = true
		}
	}
	u.path = c.String(configFlag)
	if !c.IsSet(configFlag) {
		if _, err := os.Stat(defaultConfigPath); err != nil {
			u.path = ""
			return u, nil
		}
	}
	if u.path == "" {
		return u, nil
	}
	file, err := config.Load(u.path, keys)
	if err != nil {
		return nil, err
	}
	if err := checkFile(file); err != nil {
		return nil, err
	}
	for _, v := range file.Values {
		flag := strings.ReplaceAll(v.Key, "_", "-")
		if u.cmdline[flag] {
			continue
		}
		u.origin[flag] = fmt.Sprintf("%s:%d: %s", file.Path, v.Line, v.Key)
		for _, s := range v.Values {
			if err := c.Set(flag, s); err != nil {
				return nil, &config.Error{Path: file.Path, Line: v.Line, Key: v.Key, Msg: fmt.Sprintf("bad value %q", s)}
			}
		}
	}
	return u, nil
}

// checkFile runs flagValidators over a file's values.
func checkFile(file *config.File) error {
	for _, v := range file.Values {
		check := flagValidators[strings.ReplaceAll(v.Key, "_", "-")]
		if check == nil {
			continue
		}
		for _, s := range v.Values {
			if err := check(s); err != nil {
				return &config.Error{Path: file.Path, Line: v.Line, Key: v.Key, Msg: err.Error()}
			}
		}
	}
	return nil
}

// reloadable are the keys SIGHUP applies to the running node.
var reloadable = []string{"bootstrap", "log_level", "names_file"}

// reload reads the config file again and returns the new values of the
// reloadable keys the command line does not fix (a key removed from the
// file returns to its default), and the names of other keys whose value
// changed, which need a restart.
func (u *upConfig) reload(current func(flag string) []string) (changed map[string][]string, restart []string, err error) {
	if u.path == "" {
		return nil, nil, nil
	}
	file, err := config.Load(u.path, u.keys)
	if err != nil {
		return nil, nil, err
	}
	if err := checkFile(file); err != nil {
		return nil, nil, err
	}
	changed = map[string][]string{}
	for _, k := range u.keys {
		flag := strings.ReplaceAll(k.Name, "_", "-")
		if u.cmdline[flag] {
			continue
		}
		want := k.Default
		if v, ok := file.Get(k.Name); ok {
			want = v.Values
		}
		if len(want) == 0 && k.Kind != config.List {
			want = []string{""} // a string flag without a default is ""
		}
		if slices.Equal(want, current(flag)) || (len(want) == 0 && len(current(flag)) == 0) {
			continue
		}
		if slices.Contains(reloadable, k.Name) {
			changed[k.Name] = want
		} else {
			restart = append(restart, k.Name)
		}
	}
	return changed, restart, nil
}

func configCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "the config file of korium-tun up",
		Subcommands: []*cli.Command{{
			Name:  "init",
			Usage: "print a commented default config (sudo korium-tun config init > " + defaultConfigPath + ")",
			Action: func(c *cli.Context) error {
				return writeDefaultConfig(stdout)
			},
		}},
	}
}

func writeDefaultConfig(w io.Writer) error {
	keys, err := configKeys(upFlags())
	if err != nil {
		return err
	}
	return config.Render(w, []string{
		"korium-tun config: read by `korium-tun up` from " + defaultConfigPath + " (or --config FILE).",
		"Every key is a flag of `up` in snake_case; a flag given on the command line wins.",
		"Uncomment a line (remove the leading '#') and edit its value. Lists take one",
		"\"- ITEM\" per line. SIGHUP (systemctl reload korium-tun) re-reads " + strings.Join(reloadable, ", ") + ".",
	}, keys)
}
