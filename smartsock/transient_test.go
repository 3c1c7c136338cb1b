//go:build !windows

package smartsock

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

func TestTransientKind(t *testing.T) {
	op := func(e error) error {
		return &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("sendmsg", e)}
	}
	for _, tc := range []struct {
		err  error
		want txErrKind
	}{
		{nil, txErrNone},
		{op(syscall.ENETUNREACH), txErrNetUnreach},
		{op(syscall.EHOSTUNREACH), txErrHostUnreach},
		{op(syscall.ENETDOWN), txErrNetDown},
		{op(syscall.EADDRNOTAVAIL), txErrAddrNotAvail},
		{op(syscall.ENOBUFS), txErrNoBufs},
		{op(syscall.EPERM), txErrPerm},
		{fmt.Errorf("wrapped: %w", op(syscall.EACCES)), txErrPerm},
		// quic-go needs these: path-MTU discovery, the GSO fallback, and a
		// closed socket is the end.
		{op(syscall.EMSGSIZE), txErrNone},
		{op(syscall.EIO), txErrNone},
		{net.ErrClosed, txErrNone},
		{errors.New("something else"), txErrNone},
	} {
		if got := transientKind(tc.err); got != tc.want {
			t.Errorf("transientKind(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// TestTransientSendIsLoss: a send the kernel refuses for now (here
// ENETUNREACH, in a network namespace of its own with no route anywhere, so
// nothing can leave the host) is reported to quic-go as sent and counted,
// not returned as an error that would close the connection.
func TestTransientSendIsLoss(t *testing.T) {
	if !inOwnNetns(t) {
		return
	}
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(udp, Config{Keypair: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nowhere := netip.MustParseAddrPort("198.18.0.1:9")
	if _, err := udp.WriteToUDPAddrPort([]byte{0x40}, nowhere); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("a send with no route did not fail with ENETUNREACH: %v", err)
	}
	virt, err := c.AddPeer(newKey(t).Identity(), nowhere)
	if err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, 100)
	pkt[0] = 0x40 // a short-header packet: it goes to the current path only
	for i := 0; i < 3; i++ {
		n, _, err := c.WriteMsgUDP(pkt, nil, virt)
		if err != nil || n != len(pkt) {
			t.Fatalf("WriteMsgUDP = %d, %v; want %d, nil", n, err, len(pkt))
		}
	}
	if s := c.Stats(); s.TxErrNetUnreach != 3 {
		t.Fatalf("tx_err_net_unreachable = %d, want 3", s.TxErrNetUnreach)
	}
	// A final error still reaches quic-go.
	udp.Close()
	if _, _, err := c.WriteMsgUDP(pkt, nil, virt); err == nil {
		t.Fatal("a write on a closed socket reported success")
	}
}

// inOwnNetns runs the calling test again in a network namespace of its own
// (unshare -n: only a loopback device, no routes) and reports whether this
// is that run. Root only.
func inOwnNetns(t *testing.T) bool {
	if os.Getenv("SMARTSOCK_TEST_NETNS") == t.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	cmd := exec.Command("unshare", "-n", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "SMARTSOCK_TEST_NETNS="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("in its own network namespace: %v\n%s", err, out)
	}
	return false
}
