package names

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

func newID(t testing.TB) pki.Identity {
	t.Helper()
	kp, err := pki.GenerateKeypair(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return kp.Identity()
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"bob", "alice-laptop", "n1", "cafe-1", "x", strings.Repeat("g", 63)} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Bob", "bob.korium", "-bob", "bob-", "b_b", "cafe", "1234", "fd00", "b b", strings.Repeat("g", 64), "bob\x00", "böb"} {
		if err := CheckName(bad); err == nil {
			t.Errorf("CheckName(%q) accepted", bad)
		}
	}
	if got := Canonical("Bob.korium."); got != "bob" {
		t.Errorf("Canonical = %q", got)
	}
}

func TestTable(t *testing.T) {
	a, b := newID(t), newID(t)
	tb := NewTable()
	if err := tb.Add("bob", a); err != nil {
		t.Fatal(err)
	}
	if id, ok := tb.Lookup("bob.korium."); !ok || id != a {
		t.Fatalf("Lookup = %v %v", id, ok)
	}
	// A name moves to the new identity; an identity keeps one name.
	tb.Add("bob", b)
	if tb.NameOf(a) != "" || tb.NameOf(b) != "bob" || tb.Len() != 1 {
		t.Fatalf("after reassigning bob: %v", tb.List())
	}
	tb.Add("robert", b)
	if _, ok := tb.Lookup("bob"); ok || tb.NameOf(b) != "robert" || tb.Len() != 1 {
		t.Fatalf("after renaming: %v", tb.List())
	}
	if tb.NameOfAddr(smartaddr.FromIdentity(b)) != "robert" || tb.NameOfAddr(smartaddr.FromIdentity(a)) != "" {
		t.Fatal("NameOfAddr")
	}
	cp := NewTable()
	cp.Replace(tb)
	if cp.NameOfAddr(smartaddr.FromIdentity(b)) != "robert" || cp.NameOf(b) != "robert" {
		t.Fatal("Replace")
	}
	if err := tb.Add("Not Valid", a); err == nil {
		t.Fatal("bad name accepted")
	}
	if !tb.Remove("robert") || tb.Remove("robert") || tb.Len() != 0 || tb.NameOfAddr(smartaddr.FromIdentity(b)) != "" {
		t.Fatal("Remove")
	}
	if e := (Entry{Name: "x", Identity: a}); e.Address() != smartaddr.FromIdentity(a) {
		t.Fatal("Entry.Address")
	}
}

func TestTableCap(t *testing.T) {
	tb := NewTable()
	for i := 0; i < MaxNames; i++ {
		var x pki.Identity
		x[0], x[1] = byte(i), byte(i>>8)
		tb.byName[fmt.Sprintf("n%d", i)] = x
	}
	if err := tb.Add("one-more", newID(t)); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("Add beyond MaxNames: %v", err)
	}
}

func TestParse(t *testing.T) {
	a, b := newID(t), newID(t)
	in := "# comment\n\nbob " + a.String() + "\n  alice.korium   " + b.String() + "  \n"
	tb, err := Parse("names", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := tb.Lookup("bob"); id != a {
		t.Fatal("bob")
	}
	if id, _ := tb.Lookup("alice"); id != b {
		t.Fatal("alice")
	}
	bad := map[string]string{
		"bob\n":                                     "names:1: want NAME IDENTITY",
		"bob " + a.String() + " extra\n":            "names:1: want NAME IDENTITY",
		"\nBAD_ " + a.String() + "\n":               "names:2: name",
		"bob " + strings.Repeat("0", 64):            "names:1: ",
		"bob " + a.String()[:63] + "\n":             "names:1: ",
		"bob " + a.String() + "\nbob " + b.String(): "names:2: name bob is given twice",
		strings.Repeat("x", 5000):                   "token too long",
	}
	for in, want := range bad {
		if _, err := Parse("names", strings.NewReader(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%.40q) = %v, want %q", in, err, want)
		}
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "names")
	if tb, err := Load(path); err != nil || tb.Len() != 0 {
		t.Fatalf("missing file: %v %v", tb, err)
	}
	a, b := newID(t), newID(t)
	tb := NewTable()
	tb.Add("bob", a)
	tb.Add("alice", b)
	if err := tb.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil || got.Len() != 2 || got.NameOf(a) != "bob" || got.NameOf(b) != "alice" {
		t.Fatalf("Load after Save: %v %v", got.List(), err)
	}
	// Saving again replaces the file and leaves no temporary file behind.
	tb.Remove("alice")
	if err := tb.Save(path); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 || ents[0].Name() != "names" {
		t.Fatalf("directory holds %v, want only the names file", ents)
	}
	if got, _ := Load(path); got.Len() != 1 {
		t.Fatalf("after second Save: %v", got.List())
	}
	// A directory that cannot be written gives one line naming the file.
	if err := tb.Save("/proc/version/names"); err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Save into /proc: %v", err)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, MaxFileSize+1), 0o644)
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger") {
		t.Fatalf("big file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	id := newID(f)
	f.Add([]byte("bob " + id.String() + "\n"))
	f.Add([]byte("# c\n\nalice.korium. " + id.String() + "\n"))
	f.Add([]byte("bob\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tb, err := Parse("f", strings.NewReader(string(data)))
		if err != nil {
			return
		}
		// What parses survives a round trip.
		back, err := Parse("f", strings.NewReader(string(tb.Marshal())))
		if err != nil || back.Len() != tb.Len() {
			t.Fatalf("round trip: %v, %d vs %d", err, back.Len(), tb.Len())
		}
		for _, e := range tb.List() {
			if CheckName(e.Name) != nil {
				t.Fatalf("accepted bad name %q", e.Name)
			}
		}
	})
}
