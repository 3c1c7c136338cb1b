// Package config reads korium-tun's YAML config file: one flat mapping
// whose keys are given by the caller (the CLI derives them from its flags,
// so every flag has a key), each value a scalar or, for a List key, a
// sequence of scalars. It refuses what it does not know, naming the file,
// the line and the key, and renders a commented default file. It imports
// nothing of this project.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize bounds a config file: it is read whole.
const MaxFileSize = 1 << 20

// Kind is the type of a key's value.
type Kind int

const (
	String Kind = iota // any scalar
	Int                // a decimal integer
	Bool               // true or false
	List               // a sequence of scalars (a single scalar counts as one)
)

func (k Kind) String() string {
	switch k {
	case Int:
		return "an integer"
	case Bool:
		return "true or false"
	case List:
		return "a list"
	}
	return "a string"
}

// Key describes one config key.
type Key struct {
	Name    string // snake_case
	Kind    Kind
	Usage   string   // one line, for Render
	Default []string // for Render; nil: no default
}

// Value is one key as the file sets it.
type Value struct {
	Key    string
	Line   int
	Values []string // one for scalars; each element for a List
}

// File is a parsed config file.
type File struct {
	Path   string
	Values []Value // in file order, each key at most once
}

// Get returns the value of key, if the file sets it.
func (f *File) Get(key string) (Value, bool) {
	if f == nil {
		return Value{}, false
	}
	for _, v := range f.Values {
		if v.Key == key {
			return v, true
		}
	}
	return Value{}, false
}

// Error is a refusal of something in a config file.
type Error struct {
	Path string
	Line int    // 0 when it concerns the whole file
	Key  string // "" when it concerns no single key
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads and parses the file at path.
func Load(path string, keys []Key) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, &Error{Path: path, Msg: "no such file (write one with `korium-tun config init`)"}
		}
		return nil, &Error{Path: path, Msg: strings.TrimPrefix(err.Error(), "open "+path+": ")}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, &Error{Path: path, Msg: err.Error()}
	}
	if len(data) > MaxFileSize {
		return nil, &Error{Path: path, Msg: fmt.Sprintf("larger than %d bytes: not a config file", MaxFileSize)}
	}
	return Parse(path, data, keys)
}

// Parse parses data (named path in errors) as a mapping of keys.
func Parse(path string, data []byte, keys []Key) (*File, error) {
	byName := make(map[string]Key, len(keys))
	for _, k := range keys {
		byName[k.Name] = k
	}
	out := &File{Path: path}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return out, nil // empty: every default
		}
		line, msg := yamlMsg(err)
		return nil, &Error{Path: path, Line: line, Msg: msg}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &Error{Path: path, Line: extra.Line, Msg: "more than one YAML document: keep one mapping of keys"}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return out, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return out, nil // only comments
	}
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Path: path, Line: root.Line, Msg: "want a mapping of keys (key: value, one per line)"}
	}
	seen := make(map[string]int)
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], root.Content[i+1]
		if kn.Kind != yaml.ScalarNode {
			return nil, &Error{Path: path, Line: kn.Line, Msg: "a key must be a plain name"}
		}
		name := kn.Value
		k, ok := byName[name]
		if !ok {
			return nil, &Error{Path: path, Line: kn.Line, Key: name, Msg: "unknown key" + suggest(name, keys)}
		}
		if first, dup := seen[name]; dup {
			return nil, &Error{Path: path, Line: kn.Line, Key: name, Msg: fmt.Sprintf("set twice (first on line %d)", first)}
		}
		seen[name] = kn.Line
		vals, err := values(k, vn)
		if err != nil {
			line := vn.Line
			var le *lineError
			if errors.As(err, &le) {
				line = le.line
			}
			return nil, &Error{Path: path, Line: line, Key: name, Msg: err.Error()}
		}
		out.Values = append(out.Values, Value{Key: name, Line: kn.Line, Values: vals})
	}
	return out, nil
}

// values checks a key's value node against its kind.
func values(k Key, n *yaml.Node) ([]string, error) {
	if n.Kind == yaml.AliasNode {
		return nil, errors.New("aliases are not supported here")
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, fmt.Errorf("no value (want %s; delete the line to use the default)", k.Kind)
	}
	if k.Kind == List {
		if n.Kind == yaml.ScalarNode {
			return []string{n.Value}, nil
		}
		if n.Kind != yaml.SequenceNode {
			return nil, errors.New("want a list of strings (- ITEM, one per line)")
		}
		out := make([]string, 0, len(n.Content))
		for _, e := range n.Content {
			if e.Kind != yaml.ScalarNode || e.Tag == "!!null" {
				return nil, &lineError{e.Line, "each list item must be a string"}
			}
			out = append(out, e.Value)
		}
		return out, nil
	}
	if n.Kind != yaml.ScalarNode {
		return nil, fmt.Errorf("want %s, not a list or mapping", k.Kind)
	}
	switch k.Kind {
	case Int:
		if _, err := strconv.ParseInt(n.Value, 10, 64); err != nil {
			return nil, fmt.Errorf("%q is not an integer", n.Value)
		}
	case Bool:
		if n.Tag != "!!bool" {
			return nil, fmt.Errorf("%q: want true or false", n.Value)
		}
		b, err := strconv.ParseBool(n.Value)
		if err != nil {
			return nil, fmt.Errorf("%q: want true or false", n.Value)
		}
		return []string{strconv.FormatBool(b)}, nil
	}
	return []string{n.Value}, nil
}

// lineError is a refusal of a value's part on another line than the key.
type lineError struct {
	line int
	msg  string
}

func (e *lineError) Error() string { return e.msg }

// yamlMsg splits yaml.v3's "yaml: line 3: msg" into 3 and "msg".
func yamlMsg(err error) (int, string) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.ReplaceAll(msg, "\n", "; ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		_, msg, _ = strings.Cut(msg, ": ")
		return line, msg
	}
	return 0, msg
}

// suggest names the closest known key, or lists them all.
func suggest(name string, keys []Key) string {
	best, bestD := "", 3
	var all []string
	for _, k := range keys {
		all = append(all, k.Name)
		if d := distance(name, k.Name); d < bestD {
			best, bestD = k.Name, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	sort.Strings(all)
	return " (known keys: " + strings.Join(all, ", ") + ")"
}

// distance is the edit distance of two short strings, a swap of two
// neighbours counting as one edit (mut -> mtu).
func distance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// Render writes a config file that sets nothing: every key commented out
// with its usage and default, so uncommenting a line and editing its value
// is all it takes. header lines are written first, as comments.
func Render(w io.Writer, header []string, keys []Key) error {
	var b bytes.Buffer
	for _, h := range header {
		b.WriteString(strings.TrimRight("# "+h, " "))
		b.WriteByte('\n')
	}
	for _, k := range keys {
		b.WriteByte('\n')
		fmt.Fprintf(&b, "# %s\n", k.Usage)
		switch {
		case k.Kind == List:
			if len(k.Default) == 0 {
				fmt.Fprintf(&b, "#%s: []\n", k.Name)
				break
			}
			fmt.Fprintf(&b, "#%s:\n", k.Name)
			for _, d := range k.Default {
				fmt.Fprintf(&b, "#  - %s\n", quote(d))
			}
		case len(k.Default) == 0:
			fmt.Fprintf(&b, "#%s: %s\n", k.Name, quote(""))
		default:
			fmt.Fprintf(&b, "#%s: %s\n", k.Name, quoteKind(k.Kind, k.Default[0]))
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

func quoteKind(k Kind, s string) string {
	if k == Int || k == Bool {
		return s
	}
	return quote(s)
}

// quote writes s as a YAML scalar that reads back as the string s.
func quote(s string) string {
	return strconv.Quote(s)
}
