package firewall

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/korium/korium-tun/pki"
)

// Proto is an IP protocol number a rule can name.
type Proto uint8

// The protocols of a rule. ProtoAny matches every protocol (and then a
// rule names no port).
const (
	ProtoAny  Proto = 0
	ProtoTCP  Proto = 6
	ProtoUDP  Proto = 17
	ProtoICMP Proto = 58 // ICMPv6
)

func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	}
	return "proto-" + strconv.Itoa(int(p))
}

// Rule lets new inbound flows in: from the peers that From names, of one
// protocol, to a destination port in [PortLo, PortHi] (both 0: any port).
type Rule struct {
	// From is "*" (every peer), a 64-hex identity, or a SPIFFE ID pattern
	// (spiffe://TRUST_DOMAIN/SEG/...: a "*" segment matches any one
	// segment, and a "*" as the last segment any one or more).
	From   string
	Proto  Proto
	PortLo uint16
	PortHi uint16

	any    bool
	id     pki.Identity
	spiffe []string // pattern segments after "spiffe://"
}

// ErrBadRule is wrapped by every ParseRule error.
var ErrBadRule = errors.New("bad firewall rule")

// MaxRules bounds a rule set: rules are user configuration, but a reload
// must not be able to make every packet walk an unbounded list.
const MaxRules = 10000

// ParseRule parses "FROM PROTO[/PORT[-PORT]]", e.g. "* tcp/22",
// "5f1c…e2 udp/5000-5100", "spiffe://corp.example/web/* tcp/443",
// "* icmp", "5f1c…e2 any".
func ParseRule(s string) (Rule, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return Rule{}, fmt.Errorf("%w %q: want 'FROM PROTO[/PORT[-PORT]]', e.g. '* tcp/22'", ErrBadRule, s)
	}
	r := Rule{From: f[0]}
	if err := r.parseFrom(f[0]); err != nil {
		return Rule{}, fmt.Errorf("%w %q: %v", ErrBadRule, s, err)
	}
	proto, ports, hasPorts := strings.Cut(f[1], "/")
	switch proto {
	case "tcp":
		r.Proto = ProtoTCP
	case "udp":
		r.Proto = ProtoUDP
	case "icmp", "icmp6", "icmpv6":
		r.Proto = ProtoICMP
	case "any":
		r.Proto = ProtoAny
	default:
		return Rule{}, fmt.Errorf("%w %q: protocol %q is not tcp, udp, icmp or any", ErrBadRule, s, proto)
	}
	if !hasPorts {
		return r, nil
	}
	if r.Proto != ProtoTCP && r.Proto != ProtoUDP {
		return Rule{}, fmt.Errorf("%w %q: only tcp and udp rules take ports", ErrBadRule, s)
	}
	lo, hi, isRange := strings.Cut(ports, "-")
	var err error
	if r.PortLo, err = parsePort(lo); err != nil {
		return Rule{}, fmt.Errorf("%w %q: %v", ErrBadRule, s, err)
	}
	r.PortHi = r.PortLo
	if isRange {
		if r.PortHi, err = parsePort(hi); err != nil {
			return Rule{}, fmt.Errorf("%w %q: %v", ErrBadRule, s, err)
		}
		if r.PortHi < r.PortLo {
			return Rule{}, fmt.Errorf("%w %q: port range %d-%d is backwards", ErrBadRule, s, r.PortLo, r.PortHi)
		}
	}
	return r, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

func (r *Rule) parseFrom(s string) error {
	switch {
	case s == "*":
		r.any = true
		return nil
	case strings.HasPrefix(s, "spiffe://"):
		segs := strings.Split(strings.TrimPrefix(s, "spiffe://"), "/")
		if len(segs) < 2 {
			return fmt.Errorf("SPIFFE pattern %q needs a trust domain and a path", s)
		}
		for i, seg := range segs {
			if seg == "" || seg == "." || seg == ".." {
				return fmt.Errorf("SPIFFE pattern %q has an empty or dot segment", s)
			}
			if i == 0 && seg == "*" {
				return fmt.Errorf("SPIFFE pattern %q: the trust domain cannot be a wildcard", s)
			}
			if seg != "*" && strings.Contains(seg, "*") {
				return fmt.Errorf("SPIFFE pattern %q: '*' must be a whole segment", s)
			}
		}
		r.spiffe = segs
		return nil
	}
	id, err := pki.ParseIdentity(s)
	if err != nil {
		return fmt.Errorf("FROM must be '*', a 64-hex identity or a spiffe:// pattern: %v", err)
	}
	r.id = id
	return nil
}

// String returns the rule in ParseRule's syntax.
func (r Rule) String() string {
	s := r.From + " " + r.Proto.String()
	switch {
	case r.PortLo == 0:
	case r.PortLo == r.PortHi:
		s += "/" + strconv.Itoa(int(r.PortLo))
	default:
		s += "/" + strconv.Itoa(int(r.PortLo)) + "-" + strconv.Itoa(int(r.PortHi))
	}
	return s
}

// matchesPeer reports whether the rule's FROM names a peer with identity id
// and verified SPIFFE ID spiffeID ("" when it has none).
func (r *Rule) matchesPeer(id pki.Identity, spiffeID string) bool {
	switch {
	case r.any:
		return true
	case r.spiffe != nil:
		return spiffeID != "" && matchSPIFFE(r.spiffe, spiffeID)
	}
	return r.id == id
}

// matchSPIFFE matches a SPIFFE ID against pattern segments.
func matchSPIFFE(pat []string, id string) bool {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return false
	}
	for i, p := range pat {
		last := i == len(pat)-1
		seg, tail, more := strings.Cut(rest, "/")
		if seg == "" {
			return false
		}
		switch {
		case p == "*" && last:
			return true // one or more remaining segments
		case p != "*" && p != seg:
			return false
		}
		if last {
			return !more
		}
		if !more {
			return false
		}
		rest = tail
	}
	return false
}
