package addrpolicy

import (
	"errors"
	"net/netip"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		addr     string
		loopback bool
		want     error
	}{
		{"198.18.0.1:7400", false, nil},
		{"[2001:db8::1]:7400", false, nil},
		{"[::ffff:198.18.0.1]:7400", false, nil},
		{"198.18.0.1:0", false, ErrPort},
		{"0.0.0.0:7400", false, ErrUnspecified},
		{"0.1.2.3:7400", false, ErrUnspecified},
		{"[::]:7400", false, ErrUnspecified},
		{"[::1.2.3.4]:7400", false, ErrUnspecified},
		{"127.0.0.1:7400", false, ErrLoopback},
		{"127.0.0.1:7400", true, nil},
		{"[::1]:7400", false, ErrLoopback},
		{"[::ffff:127.0.0.1]:53", false, ErrLoopback},
		{"[::1]:7400", true, nil},
		{"169.254.1.1:7400", false, ErrLinkLocal},
		{"[fe80::1]:7400", false, ErrLinkLocal},
		{"[fe80::1%eth0]:7400", false, ErrZone},
		{"224.0.0.1:7400", false, ErrMulticast},
		{"[ff02::1]:7400", false, ErrMulticast},
		{"[ff05::2]:7400", true, ErrMulticast},
		{"255.255.255.255:7400", false, ErrBroadcast},
		{"240.0.0.1:7400", false, ErrBroadcast},
	} {
		a := netip.MustParseAddrPort(c.addr)
		err := Check(a, c.loopback)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("Check(%s, %v) = %v, want %v", c.addr, c.loopback, err, c.want)
		}
		if Dialable(a, c.loopback) != (c.want == nil) {
			t.Errorf("Dialable(%s, %v) = %v, disagrees with Check", c.addr, c.loopback, !(c.want == nil))
		}
	}
	if Check(netip.AddrPort{}, true) == nil || Dialable(netip.AddrPort{}, true) {
		t.Error("the zero AddrPort is dialable")
	}
}

func TestDialableAllocatesNothing(t *testing.T) {
	a := netip.MustParseAddrPort("[2001:db8::1]:7400")
	if n := testing.AllocsPerRun(100, func() { Dialable(a, false) }); n != 0 {
		t.Fatalf("Dialable allocates %v times", n)
	}
}

func FuzzDialable(f *testing.F) {
	f.Add([]byte{198, 18, 0, 1}, uint16(7400), false)
	f.Add([]byte{127, 0, 0, 1}, uint16(1), true)
	f.Add(make([]byte, 16), uint16(7400), false)
	f.Fuzz(func(t *testing.T, ip []byte, port uint16, loop bool) {
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		a := netip.AddrPortFrom(addr, port)
		if (Check(a, loop) == nil) != Dialable(a, loop) {
			t.Fatalf("Check and Dialable disagree on %v (loopback %v)", a, loop)
		}
	})
}
