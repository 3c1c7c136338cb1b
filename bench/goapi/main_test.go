package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

func testPattern() []byte {
	p := make([]byte, 1<<20)
	for i := range p {
		p[i] = byte(i*7 + i>>8)
	}
	return p
}

// TestVerify checks the integrity check itself: an intact stream passes,
// one flipped byte, a short stream and a shifted stream fail.
func TestVerify(t *testing.T) {
	pat := testPattern()
	const size = 3<<20 + 12345 // wraps the pattern
	stream := func(mutate func([]byte) []byte) error {
		var all []byte
		for int64(len(all)) < size {
			all = append(all, pat...)
		}
		all = mutate(all[:size])
		a, b := net.Pipe()
		go func() { a.Write(all); a.Close() }()
		defer b.Close()
		b.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := verify(b, pat, size)
		return err
	}
	if err := stream(func(b []byte) []byte { return b }); err != nil {
		t.Fatalf("intact stream: %v", err)
	}
	for name, m := range map[string]func([]byte) []byte{
		"flipped": func(b []byte) []byte { b[2<<20+5] ^= 1; return b },
		"short":   func(b []byte) []byte { return b[:len(b)-1] },
		"shifted": func(b []byte) []byte { return append(b[1:], 0) },
	} {
		if err := stream(m); err == nil {
			t.Errorf("%s stream passed", name)
		}
	}
}

// TestTransfer runs one small transfer over each pair and checks that the
// figures come out.
func TestTransfer(t *testing.T) {
	pat := testPattern()
	for _, mode := range []string{"wg", "korium"} {
		t.Run(mode, func(t *testing.T) {
			var p *pair
			var err error
			if mode == "wg" {
				p, err = newWGPair(1420)
			} else {
				p, err = newKoriumPair(0, 4, true)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			f, err := p.transfer(pat, 8<<20, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if f.Gbps <= 0 || f.Seconds <= 0 {
				t.Errorf("figure %+v", f)
			}
			if p.stats != nil && !strings.Contains(p.stats(8<<20), "per MiB") {
				t.Errorf("stats %q", p.stats(8<<20))
			}
		})
	}
}
