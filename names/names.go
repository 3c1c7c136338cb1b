// Package names maps short names chosen by the user ("bob") to peer
// identities, read from and written to a names file of "NAME IDENTITY"
// lines. The node answers DNS for NAME.korium. from it, and every CLI
// command that takes a peer accepts a name. It imports only pki,
// smartaddr and internal/atomicfile.
package names

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/korium/korium-tun/internal/atomicfile"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// Domain is the DNS zone the node answers for: NAME.korium.
const Domain = "korium"

// DefaultPath is the names file `korium-tun up` reads by default.
const DefaultPath = "/etc/korium-tun/names"

// Limits: the file is read whole and every name is held in memory.
const (
	MaxNames    = 10000
	MaxFileSize = 2 << 20
	MaxNameLen  = 63 // one DNS label
)

// ErrUnknown is returned by Lookup for a name that is not in the table.
var ErrUnknown = errors.New("names: unknown name")

// Entry is one name.
type Entry struct {
	Name     string       `json:"name"`
	Identity pki.Identity `json:"identity"`
}

// Address is the entry's SmartAddr.
func (e Entry) Address() netip.Addr { return smartaddr.FromIdentity(e.Identity) }

// CheckName accepts a DNS label of lowercase letters, digits and inner
// hyphens that cannot be mistaken for an identity or an address: it has a
// letter that is not a hex digit, or a hyphen, so "cafe" is refused but
// "cafe-1" and "bob" are fine.
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("name %q: want 1-%d characters", name, MaxNameLen)
	}
	hexOnly := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'f', c >= '0' && c <= '9':
		case c >= 'g' && c <= 'z':
			hexOnly = false
		case c == '-' && i > 0 && i < len(name)-1:
			hexOnly = false
		default:
			return fmt.Errorf("name %q: use lowercase letters, digits and inner hyphens only", name)
		}
	}
	if hexOnly {
		return fmt.Errorf("name %q: all hex digits could be read as an identity prefix: add a letter g-z or a hyphen", name)
	}
	return nil
}

// Canonical strips a trailing ".korium" or ".korium." and lowercases, so
// "Bob.korium." and "bob" are the same name.
func Canonical(s string) string {
	s = strings.ToLower(strings.TrimSuffix(s, "."))
	return strings.TrimSuffix(s, "."+Domain)
}

// Table is the set of names. It is safe for concurrent use.
type Table struct {
	mu     sync.RWMutex // guards the maps
	byName map[string]pki.Identity
	byID   map[pki.Identity]string
	byAddr map[netip.Addr]string // SmartAddr -> name, for PTR answers
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{byName: map[string]pki.Identity{}, byID: map[pki.Identity]string{}, byAddr: map[netip.Addr]string{}}
}

// Lookup returns the identity of name (Canonical is applied).
func (t *Table) Lookup(name string) (pki.Identity, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	id, ok := t.byName[Canonical(name)]
	return id, ok
}

// NameOf returns the name of id, or "".
func (t *Table) NameOf(id pki.Identity) string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.byID[id]
}

// NameOfAddr returns the name of the peer owning a SmartAddr, or "".
func (t *Table) NameOfAddr(a netip.Addr) string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.byAddr[a]
}

// Len is the number of names.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byName)
}

// List returns every entry, sorted by name.
func (t *Table) List() []Entry {
	t.mu.RLock()
	out := make([]Entry, 0, len(t.byName))
	for n, id := range t.byName {
		out = append(out, Entry{Name: n, Identity: id})
	}
	t.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Map returns identity (hex) -> name for every entry.
func (t *Table) Map() map[string]string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make(map[string]string, len(t.byID))
	for id, n := range t.byID {
		out[id.String()] = n
	}
	return out
}

// Add sets name to id. A name already used for another identity is
// replaced; an identity keeps one name, so its old name goes.
func (t *Table) Add(name string, id pki.Identity) error {
	name = Canonical(name)
	if err := CheckName(name); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.byName[name]; !ok && len(t.byName) >= MaxNames {
		return fmt.Errorf("names: the table holds %d names already (the limit)", MaxNames)
	}
	t.addLocked(name, id)
	return nil
}

func (t *Table) addLocked(name string, id pki.Identity) {
	if old, ok := t.byName[name]; ok {
		delete(t.byID, old)
		delete(t.byAddr, smartaddr.FromIdentity(old))
	}
	if old, ok := t.byID[id]; ok {
		delete(t.byName, old)
	}
	t.byName[name] = id
	t.byID[id] = name
	t.byAddr[smartaddr.FromIdentity(id)] = name
}

// Remove deletes name; it reports whether it was there.
func (t *Table) Remove(name string) bool {
	name = Canonical(name)
	t.mu.Lock()
	defer t.mu.Unlock()
	id, ok := t.byName[name]
	if ok {
		delete(t.byName, name)
		delete(t.byID, id)
		delete(t.byAddr, smartaddr.FromIdentity(id))
	}
	return ok
}

// Replace swaps the table's contents for other's.
func (t *Table) Replace(other *Table) {
	other.mu.RLock()
	byName := make(map[string]pki.Identity, len(other.byName))
	byID := make(map[pki.Identity]string, len(other.byID))
	byAddr := make(map[netip.Addr]string, len(other.byAddr))
	for n, id := range other.byName {
		byName[n], byID[id] = id, n
	}
	for a, n := range other.byAddr {
		byAddr[a] = n
	}
	other.mu.RUnlock()
	t.mu.Lock()
	t.byName, t.byID, t.byAddr = byName, byID, byAddr
	t.mu.Unlock()
}

// Parse reads a names file: one "NAME IDENTITY" per line; blank lines and
// lines starting with '#' are skipped. A bad line is refused with its
// number (name is the file's name in errors).
func Parse(name string, r io.Reader) (*Table, error) {
	t := NewTable()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), 4096)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		f := strings.Fields(text)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s:%d: want NAME IDENTITY", name, line)
		}
		n := Canonical(f[0])
		if err := CheckName(n); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", name, line, err)
		}
		id, err := pki.ParseIdentity(f[1])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %q is not an identity (64 lowercase hex of a valid key)", name, line, f[1])
		}
		if other, dup := t.byName[n]; dup && other != id {
			return nil, fmt.Errorf("%s:%d: name %s is given twice", name, line, n)
		}
		if len(t.byName) >= MaxNames {
			return nil, fmt.Errorf("%s:%d: more than %d names", name, line, MaxNames)
		}
		t.addLocked(n, id)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	return t, nil
}

// Load reads the names file at path. A missing file is an empty table.
func Load(path string) (*Table, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return NewTable(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("names file: %v", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > MaxFileSize {
		return nil, fmt.Errorf("names file %s is larger than %d bytes", path, MaxFileSize)
	}
	return Parse(path, io.LimitReader(f, MaxFileSize))
}

// Marshal writes the table in the file format, sorted by name.
func (t *Table) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString("# korium-tun names: NAME IDENTITY, one per line (`korium-tun names add` writes this file)\n")
	for _, e := range t.List() {
		fmt.Fprintf(&b, "%s %s\n", e.Name, e.Identity)
	}
	return b.Bytes()
}

// Save writes the table to path atomically (internal/atomicfile): a reader
// or a crash sees the old file or the new one, never half of one, and a
// path that is not a regular file is never replaced. The directory is
// created (0755) if missing.
func (t *Table) Save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("names file: %v", err)
	}
	if err := atomicfile.Write(path, t.Marshal(), 0o644); err != nil {
		return fmt.Errorf("writing names file %s: %v", path, err)
	}
	return nil
}
