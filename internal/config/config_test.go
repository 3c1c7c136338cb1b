package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var testKeys = []Key{
	{Name: "key", Kind: String, Usage: "identity key file", Default: []string{"/var/lib/korium-tun/key"}},
	{Name: "bootstrap", Kind: List, Usage: "IDENTITY@HOST:PORT of a peer"},
	{Name: "mtu", Kind: Int, Usage: "tunnel MTU", Default: []string{"1392"}},
	{Name: "relay", Kind: Bool, Usage: "relay for others", Default: []string{"true"}},
	{Name: "dns", Kind: String, Usage: "DNS responder"},
}

func TestParseGood(t *testing.T) {
	f, err := Parse("c.yaml", []byte("# a comment\nkey: /k\nbootstrap:\n  - a@1.2.3.4:5\n  - b@[::1]:6\nmtu: 1280\nrelay: false\n"), testKeys)
	if err != nil {
		t.Fatal(err)
	}
	want := []Value{
		{Key: "key", Line: 2, Values: []string{"/k"}},
		{Key: "bootstrap", Line: 3, Values: []string{"a@1.2.3.4:5", "b@[::1]:6"}},
		{Key: "mtu", Line: 6, Values: []string{"1280"}},
		{Key: "relay", Line: 7, Values: []string{"false"}},
	}
	if !reflect.DeepEqual(f.Values, want) {
		t.Fatalf("got %+v\nwant %+v", f.Values, want)
	}
	if v, ok := f.Get("mtu"); !ok || v.Values[0] != "1280" {
		t.Fatalf("Get(mtu) = %v %v", v, ok)
	}
	if _, ok := f.Get("dns"); ok {
		t.Fatal("Get(dns) found a key the file does not set")
	}
	// A single scalar is a one-item list.
	f, err = Parse("c.yaml", []byte("bootstrap: a@1.2.3.4:5\n"), testKeys)
	if err != nil || !reflect.DeepEqual(f.Values[0].Values, []string{"a@1.2.3.4:5"}) {
		t.Fatalf("scalar list: %+v %v", f, err)
	}
	for _, empty := range []string{"", "# only comments\n", "---\n"} {
		if f, err := Parse("c.yaml", []byte(empty), testKeys); err != nil || len(f.Values) != 0 {
			t.Fatalf("%q: %+v %v", empty, f, err)
		}
	}
}

// Every refusal names the file, the line and (where there is one) the key,
// on one line.
func TestParseRefusals(t *testing.T) {
	cases := []struct{ in, want string }{
		{"key: /k\nbogus: 1\n", "c.yaml:2: bogus: unknown key"},
		{"mut: 1280\n", "c.yaml:1: mut: unknown key (did you mean mtu?)"},
		{"mtu: big\n", `c.yaml:1: mtu: "big" is not an integer`},
		{"mtu: [1]\n", "c.yaml:1: mtu: want an integer, not a list or mapping"},
		{"relay: yes\n", `c.yaml:1: relay: "yes": want true or false`},
		{"relay: 1\n", `c.yaml:1: relay: "1": want true or false`},
		{"key:\n", "c.yaml:1: key: no value"},
		{"\n\nmtu: 1\nmtu: 2\n", "c.yaml:4: mtu: set twice (first on line 3)"},
		{"bootstrap: {a: b}\n", "c.yaml:1: bootstrap: want a list"},
		{"bootstrap:\n  - [x]\n", "c.yaml:2: bootstrap: each list item must be a string"},
		{"- a\n- b\n", "c.yaml:1: want a mapping"},
		{"key: [\n", "c.yaml:1: did not find expected node content"},
		{"key: a\n---\nkey: b\n", "c.yaml:2: more than one YAML document"},
		{"key: &x 1\ndns: *x\n", "c.yaml:2: dns: aliases are not supported"},
		{"? [a]\n: b\n", "c.yaml:1: a key must be a plain name"},
	}
	for _, c := range cases {
		_, err := Parse("c.yaml", []byte(c.in), testKeys)
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%q: err %v, want a *config.Error", c.in, err)
			continue
		}
		if msg := err.Error(); !strings.HasPrefix(msg, c.want) || strings.Contains(msg, "\n") {
			t.Errorf("%q:\n got %q\nwant %q...", c.in, msg, c.want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "none.yaml"), testKeys); err == nil || !strings.Contains(err.Error(), "config init") {
		t.Fatalf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	os.WriteFile(big, bytes.Repeat([]byte("#\n"), MaxFileSize), 0o644)
	if _, err := Load(big, testKeys); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("big file: %v", err)
	}
	good := filepath.Join(dir, "c.yaml")
	os.WriteFile(good, []byte("mtu: 1300\n"), 0o644)
	if f, err := Load(good, testKeys); err != nil || f.Path != good || f.Values[0].Values[0] != "1300" {
		t.Fatalf("Load: %+v %v", f, err)
	}
}

// Render sets nothing; uncommenting every setting line gives a file that
// sets every key to its default.
func TestRenderRoundTrip(t *testing.T) {
	var b bytes.Buffer
	if err := Render(&b, []string{"korium-tun config", ""}, testKeys); err != nil {
		t.Fatal(err)
	}
	f, err := Parse("init.yaml", b.Bytes(), testKeys)
	if err != nil || len(f.Values) != 0 {
		t.Fatalf("rendered file sets %+v (%v), want nothing:\n%s", f, err, b.String())
	}
	var un strings.Builder
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "# ") && line != "#" {
			line = line[1:]
		}
		un.WriteString(line + "\n")
	}
	f, err = Parse("init.yaml", []byte(un.String()), testKeys)
	if err != nil {
		t.Fatalf("uncommented: %v\n%s", err, un.String())
	}
	if len(f.Values) != len(testKeys) {
		t.Fatalf("uncommented file sets %d keys, want %d:\n%s", len(f.Values), len(testKeys), un.String())
	}
	for i, k := range testKeys {
		v := f.Values[i]
		want := k.Default
		if len(want) == 0 && k.Kind != List {
			want = []string{""}
		}
		if v.Key != k.Name || len(v.Values) != len(want) || (len(want) > 0 && !reflect.DeepEqual(v.Values, want)) {
			t.Errorf("key %s: got %+v, want default %q", k.Name, v, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"key: /k\n", "bootstrap:\n - a\n - b\n", "mtu: 1\nrelay: true\n", "a: &x 1\nkey: *x\n", "- a\n", "key: [\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}
		file, err := Parse("f.yaml", data, testKeys)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		for _, v := range file.Values {
			if v.Line < 1 {
				t.Fatalf("value %+v without a line", v)
			}
		}
	})
}
