package rpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"

	"github.com/korium/korium-tun/pki"
)

// pair is a real QUIC connection over loopback UDP between two pki
// identities, with srv serving requests on the server end.
type pair struct {
	client, server *quic.Conn
	clientID       pki.Identity
	srv            *Server
	served         chan error // Serve's result
}

func newKey(t testing.TB) *pki.Keypair {
	kp, err := pki.GenerateKeypair(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func newTransport(t testing.TB) *quic.Transport {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: c}
	t.Cleanup(func() { tr.Close(); c.Close() })
	return tr
}

var testQUIC = &quic.Config{MaxIncomingStreams: 64, MaxIncomingUniStreams: -1, MaxIdleTimeout: 10 * time.Second, HandshakeIdleTimeout: 5 * time.Second}

func newPair(t testing.TB, cfg Config) *pair {
	t.Helper()
	return newPairOn(t, NewServer(cfg))
}

// newPairOn is newPair with a given server, so that several client
// identities can share one.
func newPairOn(t testing.TB, srv *Server) *pair {
	t.Helper()
	ckp, skp := newKey(t), newKey(t)
	ctr, str := newTransport(t), newTransport(t)
	stls, err := pki.TLSConfig{Keypair: skp}.Server(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctls, err := pki.TLSConfig{Keypair: ckp}.Client(skp.Identity())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := str.Listen(stls, testQUIC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	accepted := make(chan *quic.Conn, 1)
	go func() {
		c, _ := ln.Accept(ctx)
		accepted <- c
	}()
	client, err := ctr.Dial(ctx, str.Conn.LocalAddr(), ctls, testQUIC)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	from, err := pki.PeerIdentity(server.ConnectionState().TLS)
	if err != nil || from != ckp.Identity() {
		t.Fatalf("server sees peer %v, %v", from, err)
	}
	p := &pair{client: client, server: server, clientID: from, srv: srv, served: make(chan error, 1)}
	go func() { p.served <- p.srv.Serve(context.Background(), server, from) }()
	t.Cleanup(func() {
		client.CloseWithError(0, "")
		server.CloseWithError(0, "")
		select {
		case <-p.served:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after the connection closed")
		}
	})
	return p
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func wantKind(t testing.TB, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("err = %v, want %v", err, kind)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err %T is not an *Error", err)
	}
}

func TestEchoRoundTrip(t *testing.T) {
	p := newPair(t, Config{})
	var gotFrom atomic.Value
	p.srv.Handle(ProtoApp, func(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
		gotFrom.Store(from)
		return append([]byte("echo:"), req...), nil
	})
	for i := 0; i < 20; i++ {
		req := []byte(fmt.Sprintf("hello %d", i))
		resp, err := Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, req)
		if err != nil {
			t.Fatal(err)
		}
		if want := "echo:" + string(req); string(resp) != want {
			t.Fatalf("got %q, want %q", resp, want)
		}
	}
	if gotFrom.Load() != p.clientID {
		t.Fatalf("handler saw from=%v, want the client's identity", gotFrom.Load())
	}
	// An empty request and response are fine.
	p.srv.Handle(ProtoDHT, func(context.Context, pki.Identity, []byte) ([]byte, error) { return nil, nil })
	if resp, err := Call(ctxFor(t, 5*time.Second), p.client, ProtoDHT, nil); err != nil || len(resp) != 0 {
		t.Fatalf("empty call = %q, %v", resp, err)
	}
	// The server counts a response once its write returned, which can be
	// after the client has read it.
	waitFor(t, "21 requests and 21 responses counted", 5*time.Second, func() bool {
		st := p.srv.Stats()
		return st.Requests == 21 && st.Responses == 21
	})
	if by := p.srv.Stats().ByProto; by[ProtoApp] != 20 || by[ProtoDHT] != 1 || by[ProtoGossip] != 0 {
		t.Errorf("requests by protocol %v, want 20 app and 1 DHT", by)
	}
}

func TestHandlerErrorAndRefusal(t *testing.T) {
	p := newPair(t, Config{})
	p.srv.Handle(ProtoApp, func(_ context.Context, _ pki.Identity, req []byte) ([]byte, error) {
		if string(req) == "refuse" {
			return nil, RefuseError("queue full")
		}
		return nil, errors.New("no such key " + string(bytes.Repeat([]byte("x"), 1000)))
	})
	_, err := Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, []byte("get"))
	wantKind(t, err, ErrHandler)
	if e := err.(*Error); len(e.Detail) != MaxErrorText || e.Detail[:11] != "no such key" {
		t.Fatalf("remote error text %q (%d bytes)", e.Detail[:20], len(e.Detail))
	}
	_, err = Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, []byte("refuse"))
	wantKind(t, err, ErrRefused)
	if e := err.(*Error); e.Detail != "queue full" {
		t.Fatalf("refusal text %q", e.Detail)
	}
	// A known protocol without a handler is refused too.
	_, err = Call(ctxFor(t, 5*time.Second), p.client, ProtoGossip, []byte("x"))
	wantKind(t, err, ErrRefused)
	if st := p.srv.Stats(); st.HandlerErrors != 1 || st.Refused != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// rawRequest writes raw bytes on a new stream and returns the stream.
func rawRequest(t testing.TB, c *quic.Conn, b []byte, closeWrite bool) *quic.Stream {
	t.Helper()
	str, err := c.OpenStreamSync(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	str.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := str.Write(b); err != nil {
		t.Fatal(err)
	}
	if closeWrite {
		str.Close()
	}
	return str
}

func TestSizeLimits(t *testing.T) {
	p := newPair(t, Config{})
	var ran atomic.Int64
	p.srv.Handle(ProtoApp, func(_ context.Context, _ pki.Identity, req []byte) ([]byte, error) {
		ran.Add(1)
		if string(req) == "big answer" {
			return make([]byte, MaxMessageSize+1), nil
		}
		return req, nil // echo
	})
	// Exactly 1 MiB goes through both ways.
	max := bytes.Repeat([]byte{0xab}, MaxMessageSize)
	resp, err := Call(ctxFor(t, 10*time.Second), p.client, ProtoApp, max)
	if err != nil || !bytes.Equal(resp, max) {
		t.Fatalf("1 MiB echo: %d bytes, %v", len(resp), err)
	}
	// 1 MiB + 1 is refused by the caller before sending.
	_, err = Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, make([]byte, MaxMessageSize+1))
	wantKind(t, err, ErrTooLarge)

	// A peer that sends 1 MiB + 1 anyway is answered "too large" after the
	// header: the handler never runs and the payload is never read.
	str := rawRequest(t, p.client, binary.AppendUvarint([]byte{ProtoApp}, MaxMessageSize+1), false)
	go str.Write(make([]byte, MaxMessageSize+1)) // fails once the server stops reading
	st, text, err := ReadResponse(str, MaxMessageSize)
	if err != nil || st != StatusTooLarge {
		t.Fatalf("raw 1 MiB+1: %v %q %v", st, text, err)
	}
	// A huge length prefix, with nothing behind it, the same.
	str = rawRequest(t, p.client, binary.AppendUvarint([]byte{ProtoApp}, 1<<60), false)
	if st, _, err := ReadResponse(str, MaxMessageSize); err != nil || st != StatusTooLarge {
		t.Fatalf("huge prefix: %v %v", st, err)
	}
	if n := ran.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want once (the 1 MiB echo)", n)
	}
	// A response above the limit is not sent.
	_, err = Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, []byte("big answer"))
	wantKind(t, err, ErrTooLarge)
	if s := p.srv.Stats(); s.TooLarge != 3 || s.Requests != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestUnknownProtocolRefused(t *testing.T) {
	p := newPair(t, Config{})
	_, err := Call(ctxFor(t, 5*time.Second), p.client, 9, []byte("x"))
	wantKind(t, err, ErrRefused) // refused locally
	for _, proto := range []byte{0, 5, 255} {
		str := rawRequest(t, p.client, []byte{proto, 1, 'x'}, true)
		st, text, err := ReadResponse(str, MaxMessageSize)
		if err != nil || st != StatusRefused {
			t.Fatalf("proto %d: %v %q %v", proto, st, text, err)
		}
	}
	if s := p.srv.Stats(); s.Refused != 3 || s.Requests != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestHandlerTimeout(t *testing.T) {
	p := newPair(t, Config{HandlerTimeout: 100 * time.Millisecond})
	p.srv.Handle(ProtoApp, func(ctx context.Context, _ pki.Identity, _ []byte) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	start := time.Now()
	_, err := Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, []byte("x"))
	wantKind(t, err, ErrTimeout)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("timeout answered after %v", d)
	}
	if s := p.srv.Stats(); s.Timeouts != 1 {
		t.Fatalf("stats %+v", s)
	}
	// A handler that ignores ctx is answered at the timeout all the same.
	release := make(chan struct{})
	p.srv.Handle(ProtoDHT, func(context.Context, pki.Identity, []byte) ([]byte, error) {
		<-release
		return []byte("late"), nil
	})
	_, err = Call(ctxFor(t, 5*time.Second), p.client, ProtoDHT, nil)
	wantKind(t, err, ErrTimeout)
	if a := p.srv.Stats().Active; a != 1 {
		t.Fatalf("active = %d while the stubborn handler runs", a)
	}
	close(release)
	waitFor(t, "handler exit", 5*time.Second, func() bool { return p.srv.Stats().Active == 0 })
}

func TestCallerDeadline(t *testing.T) {
	p := newPair(t, Config{})
	entered := make(chan struct{}, 1)
	exited := make(chan struct{}, 1)
	p.srv.Handle(ProtoApp, func(ctx context.Context, _ pki.Identity, _ []byte) ([]byte, error) {
		entered <- struct{}{}
		<-ctx.Done() // ends when the caller's reset reaches us, not at 10 s
		exited <- struct{}{}
		return nil, ctx.Err()
	})
	start := time.Now()
	_, err := Call(ctxFor(t, 200*time.Millisecond), p.client, ProtoApp, []byte("x"))
	wantKind(t, err, ErrTimeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v does not wrap context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("caller deadline honoured after %v", d)
	}
	<-entered
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("handler still running after the caller gave up")
	}
	waitFor(t, "abandoned count", 5*time.Second, func() bool { return p.srv.Stats().Abandoned == 1 })
	if s := p.srv.Stats(); s.HandlerErrors != 0 || s.Timeouts != 0 {
		t.Fatalf("stats %+v", s)
	}
	// A cancelled (not expired) context also ends the call.
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-entered; cancel() }()
	_, err = Call(ctx, p.client, ProtoApp, []byte("x"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
}

func TestNoConnection(t *testing.T) {
	_, err := Call(context.Background(), nil, ProtoApp, nil)
	wantKind(t, err, ErrUnreachable)
	p := newPair(t, Config{})
	p.client.CloseWithError(0, "bye")
	_, err = Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, nil)
	wantKind(t, err, ErrUnreachable)
	select {
	case <-p.served:
		p.served <- nil // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running after the peer closed the connection")
	}
}

// TestConcurrencyLimit fills all 64 streams with blocked handlers: the 65th
// call cannot even open a stream (quic-go's stream limit) and times out,
// no more than 64 handlers ever run at once, and when they are released
// every call completes.
func TestConcurrencyLimit(t *testing.T) {
	p := newPair(t, Config{})
	var running, peak atomic.Int64
	release := make(chan struct{})
	p.srv.Handle(ProtoApp, func(ctx context.Context, _ pki.Identity, req []byte) ([]byte, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		select {
		case <-release:
			return req, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := Call(ctxFor(t, 20*time.Second), p.client, ProtoApp, []byte("x"))
			errs <- err
		}()
	}
	waitFor(t, "64 handlers running", 10*time.Second, func() bool { return running.Load() == n })
	_, err := Call(ctxFor(t, 300*time.Millisecond), p.client, ProtoApp, []byte("65th"))
	wantKind(t, err, ErrTimeout)
	if got := peak.Load(); got != n {
		t.Fatalf("peak concurrent handlers %d, want %d", got, n)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := peak.Load(); got > n {
		t.Fatalf("peak concurrent handlers %d above %d", got, n)
	}
	// Streams are free again.
	if _, err := Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, []byte("after")); err != nil {
		t.Fatal(err)
	}
}

// TestServerBoundsHandlersBelowStreamLimit shows Serve's own bound: with
// MaxConcurrent 4 only 4 handlers run although QUIC allows 64 streams.
func TestServerBoundsHandlersBelowStreamLimit(t *testing.T) {
	p := newPair(t, Config{MaxConcurrent: 4})
	var running, peak atomic.Int64
	release := make(chan struct{})
	p.srv.Handle(ProtoApp, func(ctx context.Context, _ pki.Identity, req []byte) ([]byte, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		<-release
		return req, nil
	})
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := Call(ctxFor(t, 20*time.Second), p.client, ProtoApp, []byte("x")); err != nil {
				t.Error(err)
			}
		}()
	}
	waitFor(t, "4 handlers running", 10*time.Second, func() bool { return running.Load() == 4 })
	// The 6 other streams are open at the QUIC level but not accepted.
	close(release)
	wg.Wait()
	if got := peak.Load(); got != 4 {
		t.Fatalf("peak concurrent handlers %d, want 4", got)
	}
}

// TestStalledPeerCutOff: a peer that sends half a frame and goes quiet has
// its stream reset at StreamTimeout; no handler runs.
func TestStalledPeerCutOff(t *testing.T) {
	p := newPair(t, Config{StreamTimeout: 200 * time.Millisecond})
	var ran atomic.Bool
	p.srv.Handle(ProtoApp, func(context.Context, pki.Identity, []byte) ([]byte, error) {
		ran.Store(true)
		return nil, nil
	})
	for _, half := range [][]byte{
		{ProtoApp},                     // no length
		{ProtoApp, 0x80},               // half a length
		{ProtoApp, 100, 'a', 'b', 'c'}, // 3 of 100 bytes
	} {
		str := rawRequest(t, p.client, half, false)
		start := time.Now()
		_, _, err := ReadResponse(str, MaxMessageSize)
		var se *quic.StreamError
		if !errors.As(err, &se) || se.ErrorCode != codeStalled || !se.Remote {
			t.Fatalf("%x: read = %v, want a reset with code %d", half, err, codeStalled)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("cut off after %v", d)
		}
	}
	if ran.Load() {
		t.Fatal("handler ran for a partial request")
	}
	if s := p.srv.Stats(); s.StreamErrors != 3 || s.Requests != 0 {
		t.Fatalf("stats %+v", s)
	}
	// The connection itself still serves.
	if _, err := Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, nil); err != nil {
		t.Fatal(err)
	}
}

func TestServeStopsWithContext(t *testing.T) {
	p := newPair(t, Config{})
	// Serve a second time on the same conn with a context we cancel: it
	// returns while the connection stays open.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.srv.Serve(ctx, p.server, p.clientID) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

// TestStreamsAreReleased: many more sequential requests than the 64-stream
// limit go through one connection, so every finished stream gives its
// credit back (quic-go needs the FIN read on both ends for that). Half of
// them send the FIN only after another full call, so it surely travels in
// a packet of its own after the frame.
func TestStreamsAreReleased(t *testing.T) {
	p := newPair(t, Config{})
	p.srv.Handle(ProtoApp, func(_ context.Context, _ pki.Identity, req []byte) ([]byte, error) { return req, nil })
	for i := 0; i < 140; i++ {
		if i%2 == 0 {
			if _, err := Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, []byte("x")); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			continue
		}
		str := rawRequest(t, p.client, AppendRequest(nil, ProtoApp, []byte("y")), false)
		if _, err := Call(ctxFor(t, 5*time.Second), p.client, ProtoApp, []byte("z")); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		str.Close()
		st, payload, err := ReadResponse(str, MaxMessageSize)
		if err != nil || st != StatusOK || string(payload) != "y" || expectEOF(str) != nil {
			t.Fatalf("raw %d: %v %q %v", i, st, payload, err)
		}
	}
}

// TestTrailingDataIsReset: bytes after the request frame make it malformed.
func TestTrailingDataIsReset(t *testing.T) {
	p := newPair(t, Config{})
	var ran atomic.Bool
	p.srv.Handle(ProtoApp, func(context.Context, pki.Identity, []byte) ([]byte, error) { ran.Store(true); return nil, nil })
	str := rawRequest(t, p.client, append(AppendRequest(nil, ProtoApp, []byte("a")), "junk"...), true)
	_, _, err := ReadResponse(str, MaxMessageSize)
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != codeMalformed {
		t.Fatalf("read = %v, want a reset with code %d", err, codeMalformed)
	}
	if ran.Load() {
		t.Fatal("handler ran for a malformed request")
	}
}
