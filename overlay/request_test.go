package overlay

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/rpc"
)

func reqCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestRequestResponse: a and b exchange requests both ways, b with a
// handler and a through IncomingRequests; c, connected to b but serving
// nothing, refuses; sizes above 1 MiB are refused on either side.
func TestRequestResponse(t *testing.T) {
	b := newTestNode(t, nil, "")
	a := newTestNode(t, nil, "", b.contact())
	c := newTestNode(t, nil, "", b.contact())
	waitFor(t, "connections", 5*time.Second, func() bool { return connected(a, b)() && connected(c, b)() })

	b.SetRequestHandler(func(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
		switch string(req) {
		case "fail":
			return nil, errors.New("b cannot do that")
		case "huge":
			return make([]byte, MaxRequestSize+1), nil
		}
		return append([]byte(from.Short()+":"), req...), nil
	})
	// a -> b
	resp, err := a.Send(reqCtx(t), b.id, []byte("hello b"))
	if err != nil || string(resp) != a.id.Short()+":hello b" {
		t.Fatalf("a->b = %q, %v", resp, err)
	}
	// b -> a, answered asynchronously from a's channel.
	in := a.IncomingRequests()
	go func() {
		for r := range in {
			if r.From != b.id {
				r.Reject("unexpected sender")
				continue
			}
			r.Respond(append([]byte("a got "), r.Data...))
		}
	}()
	resp, err = b.Send(reqCtx(t), a.id, []byte("hello a"))
	if err != nil || string(resp) != "a got hello a" {
		t.Fatalf("b->a = %q, %v", resp, err)
	}
	// 1 MiB goes, 1 MiB + 1 does not, in either direction.
	max := bytes.Repeat([]byte{1}, MaxRequestSize-len(a.id.Short()+":"))
	if resp, err := a.Send(reqCtx(t), b.id, max); err != nil || len(resp) != MaxRequestSize {
		t.Fatalf("1 MiB: %d bytes, %v", len(resp), err)
	}
	if _, err := a.Send(reqCtx(t), b.id, make([]byte, MaxRequestSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized request: %v", err)
	}
	if _, err := a.Send(reqCtx(t), b.id, []byte("huge")); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized response: %v", err)
	}
	// The handler's error text reaches the sender.
	if _, err := a.Send(reqCtx(t), b.id, []byte("fail")); !errors.Is(err, ErrHandler) || !bytes.Contains([]byte(err.Error()), []byte("b cannot do that")) {
		t.Fatalf("handler error: %v", err)
	}
	// c serves no application requests: refused. No connection a-c: unreachable.
	if _, err := b.Send(reqCtx(t), c.id, []byte("x")); !errors.Is(err, ErrRefused) {
		t.Fatalf("request to c: %v", err)
	}
	if _, err := a.Send(reqCtx(t), c.id, []byte("x")); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("request to unconnected c: %v", err)
	}
	// Internal protocols are served only when registered.
	if _, err := a.Call(reqCtx(t), b.id, rpc.ProtoDHT, []byte("ping")); !errors.Is(err, ErrRefused) {
		t.Fatalf("unregistered DHT call: %v", err)
	}
	if err := b.RegisterProtocol(rpc.ProtoDHT, func(context.Context, pki.Identity, []byte) ([]byte, error) { return []byte("pong"), nil }); err != nil {
		t.Fatal(err)
	}
	if resp, err := a.Call(reqCtx(t), b.id, rpc.ProtoDHT, []byte("ping")); err != nil || string(resp) != "pong" {
		t.Fatalf("DHT call = %q, %v", resp, err)
	}
	if err := b.RegisterProtocol(rpc.ProtoApp, nil); err == nil {
		t.Fatal("RegisterProtocol(ProtoApp) accepted")
	}
	if st := b.Status(); st.Drops["rpc_too_large"] != 1 || st.Counters["rpc_requests"] < 5 {
		t.Fatalf("b's counters: drops %v counters %v", st.Drops, st.Counters)
	}
	if st := c.Status(); st.Drops["app_no_handler"] != 1 {
		t.Fatalf("c's drops %v", st.Drops)
	}
}

// TestRequestQueueFull: with a queue of one and nobody reading, the first
// request waits in the queue and the second is refused and counted; the
// first one expires with a timeout and a late answer reports the expiry.
func TestRequestQueueFull(t *testing.T) {
	kp, err := pki.GenerateKeypair(context.Background(), testPoW)
	if err != nil {
		t.Fatal(err)
	}
	dev := newMemDevice()
	bn, err := New(Config{Keypair: kp, PoWBits: testPoW, Listen: "127.0.0.1:0", Device: dev, Logger: testLogger(t),
		RequestQueue: 1, RequestTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bn.Close() })
	b := &testNode{bn, dev}
	a := newTestNode(t, nil, "", b.contact())
	waitFor(t, "connection", 5*time.Second, connected(a, b))

	in := b.IncomingRequests()
	first := make(chan error, 1)
	go func() {
		_, err := a.Send(reqCtx(t), b.id, []byte("first"))
		first <- err
	}()
	waitFor(t, "first request queued", 5*time.Second, func() bool { return len(in) == 1 })
	if _, err := a.Send(reqCtx(t), b.id, []byte("second")); !errors.Is(err, ErrRefused) {
		t.Fatalf("second request: %v", err)
	}
	if got := b.stats.AppQueueFull.Load(); got != 1 {
		t.Fatalf("AppQueueFull = %d", got)
	}
	if err := <-first; !errors.Is(err, ErrTimeout) {
		t.Fatalf("unanswered request: %v", err)
	}
	r := <-in
	if string(r.Data) != "first" || r.From != a.id {
		t.Fatalf("queued request %q from %s", r.Data, r.From.Short())
	}
	if err := r.Respond([]byte("late")); !errors.Is(err, ErrTimeout) {
		t.Fatalf("late Respond: %v", err)
	}
}

// TestCloseStopsRPC: after Close no RPC goroutine of the node is left,
// also with a handler that was mid-request.
func TestCloseStopsRPC(t *testing.T) {
	b := newTestNode(t, nil, "")
	a := newTestNode(t, nil, "", b.contact())
	waitFor(t, "connection", 5*time.Second, connected(a, b))
	entered := make(chan struct{})
	b.SetRequestHandler(func(ctx context.Context, _ pki.Identity, _ []byte) ([]byte, error) {
		close(entered)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	done := make(chan error, 1)
	go func() { _, err := a.Send(reqCtx(t), b.id, []byte("x")); done <- err }()
	<-entered
	b.Close()
	if err := <-done; !errors.Is(err, ErrUnreachable) {
		t.Fatalf("request to a closing node: %v", err)
	}
	a.Close()
	buf := make([]byte, 1<<20)
	if stacks := string(buf[:runtime.Stack(buf, true)]); strings.Contains(stacks, "korium-tun/rpc.") {
		t.Fatalf("rpc goroutines left after Close:\n%s", stacks)
	}
}
