package relay

import (
	"net/netip"
	"testing"

	"github.com/korium/korium-tun/pki"
)

// TestMaxMessageSize: no message is longer than MaxMessageSize, and the
// longest punch message is exactly that long.
func TestMaxMessageSize(t *testing.T) {
	var addrs []netip.AddrPort
	for i := range MaxCandidates {
		addrs = append(addrs, netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)}), 4000))
	}
	punch, err := AppendPunch(nil, addrs)
	if err != nil {
		t.Fatal(err)
	}
	if len(punch) != MaxMessageSize {
		t.Fatalf("punch with %d IPv6 addresses is %d bytes, MaxMessageSize %d", MaxCandidates, len(punch), MaxMessageSize)
	}
	obs, err := AppendObserveResp(nil, ObserveResp{Addr: addrs[0], Flags: FlagRelays})
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string][]byte{
		"observe request":   AppendObserveReq(nil, 1),
		"observe response":  obs,
		"connect request":   AppendConnectReq(nil, pki.Identity{}),
		"connect response":  AppendConnectResp(nil, [SessionIDSize]byte{}),
		"incoming request":  AppendIncomingReq(nil, Incoming{}),
		"incoming response": AppendIncomingResp(nil),
	} {
		if len(m) > MaxMessageSize {
			t.Errorf("%s is %d bytes, above MaxMessageSize %d", name, len(m), MaxMessageSize)
		}
	}
}
