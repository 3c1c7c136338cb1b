package tca

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/korium/korium-tun/internal/atomicfile"
	"github.com/korium/korium-tun/pki"
)

// A signer signs only for identities it approved (`korium-tun ca approve`):
// it refuses a CSR, and a sign request, from any other. Revoking removes the
// approval, so the identity's next renewal finds fewer than K signers and
// fails; certificates already signed stay valid until they expire (they are
// short-lived for that reason). Approvals are the signer's own: each of the
// K signers that signs must have approved.
//
// The list lives beside the signer state (Config.ApprovalsFile), rewritten
// atomically on every change: a text file, mode 0600,
//
//	korium-tun approvals v1
//	IDENTITY UNIX-SECONDS [WORKLOAD]
//
// one line per approved identity, at most MaxApprovals of them.

// MaxApprovals bounds a signer's approval list.
const MaxApprovals = 10000

const (
	approvalsHeader  = "korium-tun approvals v1"
	maxApprovalsFile = MaxApprovals * (64 + 1 + 20 + 1 + maxSPIFFELen + 1)
)

// Approval is one identity a signer signs for.
type Approval struct {
	Identity pki.Identity `json:"identity"`
	// Workload is the only workload path it is signed with ("" for
	// spiffe://TD/IDENTITY itself, or "/a/b").
	Workload   string    `json:"workload,omitempty"`
	ApprovedAt time.Time `json:"approved_at"`
}

// ErrNotApproved is returned by a requester when fewer than K signers have
// approved its identity (the message says how many did).
var ErrNotApproved = errors.New("tca: not approved by enough signers")

// approvals is a signer's approval list, persisted at path ("" keeps it in
// memory: tests).
type approvals struct {
	path string

	mu sync.Mutex // guards m and serializes writes of the file
	m  map[pki.Identity]Approval
}

func loadApprovals(path string) (*approvals, error) {
	a := &approvals{path: path, m: map[pki.Identity]Approval{}}
	if path == "" {
		return a, nil
	}
	data, err := pki.ReadPrivateFile(path, maxApprovalsFile)
	if errors.Is(err, fs.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	if a.m, err = decodeApprovals(data); err != nil {
		return nil, fmt.Errorf("approvals %s: %w", path, err)
	}
	return a, nil
}

func decodeApprovals(data []byte) (map[pki.Identity]Approval, error) {
	m := map[pki.Identity]Approval{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 64+maxSPIFFELen+64)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 {
			if text != approvalsHeader {
				return nil, fmt.Errorf("not an approvals file (first line %q)", clipText(text))
			}
			continue
		}
		f := strings.Fields(text)
		if len(f) < 2 || len(f) > 3 {
			return nil, fmt.Errorf("line %d: want IDENTITY UNIX-SECONDS [WORKLOAD]", line)
		}
		id, err := pki.ParseIdentity(f[0])
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", line, err)
		}
		sec, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || sec < 0 || sec > 1<<40 {
			return nil, fmt.Errorf("line %d: bad time %q", line, clipText(f[1]))
		}
		ap := Approval{Identity: id, ApprovedAt: time.Unix(sec, 0).UTC()}
		if len(f) == 3 {
			if ap.Workload, err = normalizeWorkload(f[2]); err != nil || ap.Workload == "" {
				return nil, fmt.Errorf("line %d: %v", line, err)
			}
		}
		if _, dup := m[id]; dup {
			return nil, fmt.Errorf("line %d: identity %s twice", line, id.Short())
		}
		if len(m) >= MaxApprovals {
			return nil, fmt.Errorf("more than %d approvals", MaxApprovals)
		}
		m[id] = ap
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if line == 0 {
		return nil, errors.New("empty file")
	}
	return m, nil
}

func encodeApprovals(list []Approval) []byte {
	var b bytes.Buffer
	b.WriteString(approvalsHeader + "\n")
	for _, ap := range list {
		fmt.Fprintf(&b, "%s %d", ap.Identity, ap.ApprovedAt.Unix())
		if ap.Workload != "" {
			b.WriteString(" " + ap.Workload)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// normalizeWorkload checks a workload path and returns it as "/a/b" ("" for none).
func normalizeWorkload(wl string) (string, error) {
	if wl == "" {
		return "", nil
	}
	p := "/" + strings.TrimPrefix(wl, "/")
	sc := pki.SPIFFEConfig{TrustDomain: "x", Workload: p}
	if err := sc.Check(); err != nil {
		return "", err
	}
	return p, nil
}

func clipText(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// approved reports whether id may be signed with workload wl.
func (a *approvals) approved(id pki.Identity, wl string) (ok, known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ap, known := a.m[id]
	return known && ap.Workload == wl, known
}

func (a *approvals) list() []Approval {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.listLocked()
}

func (a *approvals) listLocked() []Approval {
	out := make([]Approval, 0, len(a.m))
	for _, ap := range a.m {
		out = append(out, ap)
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Identity[:], out[j].Identity[:]) < 0 })
	return out
}

// approve adds or replaces id's approval and writes the file; on a write
// error the list is left as it was.
func (a *approvals) approve(id pki.Identity, wl string, now time.Time) (Approval, error) {
	wl, err := normalizeWorkload(wl)
	if err != nil {
		return Approval{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	old, had := a.m[id]
	if !had && len(a.m) >= MaxApprovals {
		return Approval{}, fmt.Errorf("tca: the approval list is full (%d identities): revoke some first", MaxApprovals)
	}
	ap := Approval{Identity: id, Workload: wl, ApprovedAt: now.UTC().Truncate(time.Second)}
	a.m[id] = ap
	if err := a.saveLocked(); err != nil {
		if had {
			a.m[id] = old
		} else {
			delete(a.m, id)
		}
		return Approval{}, err
	}
	return ap, nil
}

// revoke removes id's approval and writes the file.
func (a *approvals) revoke(id pki.Identity) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	old, had := a.m[id]
	if !had {
		return fmt.Errorf("tca: %s is not approved by this signer", id)
	}
	delete(a.m, id)
	if err := a.saveLocked(); err != nil {
		a.m[id] = old
		return err
	}
	return nil
}

func (a *approvals) saveLocked() error {
	if a.path == "" {
		return nil
	}
	if err := atomicfile.Write(a.path, encodeApprovals(a.listLocked()), 0o600); err != nil {
		return fmt.Errorf("tca: writing the approvals %s: %v", a.path, err)
	}
	return nil
}

// ---- the Service's API ----

var errNotSigner = errors.New("tca: this node is not a CA signer")

func (s *Service) approvalsOrErr() (*approvals, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.signer == nil {
		return nil, errNotSigner
	}
	return s.signer.approvals, nil
}

// Approve makes this signer sign for id (with workload path wl, "" for
// none), persisting the list. Approving again replaces the workload.
func (s *Service) Approve(id pki.Identity, wl string) (Approval, error) {
	a, err := s.approvalsOrErr()
	if err != nil {
		return Approval{}, err
	}
	ap, err := a.approve(id, wl, s.now())
	if err == nil {
		s.log.Info("approved an identity", "identity", id.String(), "workload", ap.Workload)
	}
	return ap, err
}

// Revoke stops this signer from signing for id (its renewals fail once
// fewer than K signers approve it).
func (s *Service) Revoke(id pki.Identity) error {
	a, err := s.approvalsOrErr()
	if err != nil {
		return err
	}
	if err := a.revoke(id); err != nil {
		return err
	}
	s.log.Info("revoked an identity", "identity", id.String())
	return nil
}

// Approvals lists this signer's approvals.
func (s *Service) Approvals() ([]Approval, error) {
	a, err := s.approvalsOrErr()
	if err != nil {
		return nil, err
	}
	return a.list(), nil
}
