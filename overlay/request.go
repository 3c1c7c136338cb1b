package overlay

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/korium/korium-tun/dht"
	"github.com/korium/korium-tun/gossipsub"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/relay"
	"github.com/korium/korium-tun/rpc"
)

// Errors from Send and Call, to test with errors.Is. They are rpc's.
var (
	ErrUnreachable = rpc.ErrUnreachable // no connection to the peer
	ErrTimeout     = rpc.ErrTimeout     // the deadline passed (ours or the peer's handler's)
	ErrRefused     = rpc.ErrRefused     // the peer does not serve it, or its queue is full
	ErrTooLarge    = rpc.ErrTooLarge    // request or response above 1 MiB
	ErrHandler     = rpc.ErrHandler     // the peer's handler failed; the error carries its text
)

// MaxRequestSize caps application requests and responses (1 MiB, the
// reference's MAX_RESPONSE_SIZE).
const MaxRequestSize = rpc.MaxMessageSize

// DefaultCAMessageSize caps threshold-CA requests and responses unless
// Config.RPC.MaxSize[rpc.ProtoCA] says otherwise: a signing request carries
// a certificate to be signed and one commitment per signer, a DKG share a
// few hundred bytes; 64 KiB leaves room for large committees.
const DefaultCAMessageSize = 64 << 10

// rpcConfig is the request server's configuration: every protocol capped
// at its real maximum, so that a peer announcing a larger request is
// refused after the length prefix and none can make the node buffer more
// than that per stream.
func rpcConfig(c Config) rpc.Config {
	rc := c.RPC
	rc.HandlerTimeout = c.RequestTimeout
	rc.MaxSize[rpc.ProtoDHT] = dht.MaxMessageSize
	rc.MaxSize[rpc.ProtoGossip] = c.PubSub.Limits.MaxRPCSize
	if rc.MaxSize[rpc.ProtoGossip] == 0 {
		rc.MaxSize[rpc.ProtoGossip] = gossipsub.DefaultLimits().MaxRPCSize
	}
	rc.MaxSize[rpc.ProtoRelay] = relay.MaxMessageSize
	rc.MaxSize[rpc.ProtoApp] = MaxRequestSize
	if rc.MaxSize[rpc.ProtoCA] <= 0 {
		rc.MaxSize[rpc.ProtoCA] = DefaultCAMessageSize
	}
	return rc
}

// Request is one application request waiting for an answer, received
// through IncomingRequests. Answer it once with Respond or Reject before
// its Context ends (Config.RequestTimeout).
type Request struct {
	From pki.Identity // the authenticated sender
	Data []byte

	ctx      context.Context
	answer   chan reqAnswer // buffered 1
	answered atomic.Bool
}

type reqAnswer struct {
	data []byte
	err  error
}

// Context ends when the sender stops waiting: at the request timeout, or
// when the connection closes.
func (r *Request) Context() context.Context { return r.ctx }

// Respond sends data back to the sender.
func (r *Request) Respond(data []byte) error {
	if len(data) > MaxRequestSize {
		return fmt.Errorf("overlay: response of %d bytes: %w", len(data), ErrTooLarge)
	}
	return r.finish(reqAnswer{data: data})
}

// Reject answers with an error; the sender sees ErrHandler and reason.
func (r *Request) Reject(reason string) error {
	return r.finish(reqAnswer{err: errors.New(reason)})
}

func (r *Request) finish(a reqAnswer) error {
	if err := r.ctx.Err(); err != nil {
		return fmt.Errorf("overlay: request expired before the answer: %w", ErrTimeout)
	}
	if !r.answered.CompareAndSwap(false, true) {
		return errors.New("overlay: request already answered")
	}
	r.answer <- a
	return nil
}

// SetRequestHandler makes h answer every application request, in place of
// IncomingRequests; nil removes it. h runs on its own goroutine per request
// (at most 64 at once per peer) and must return when ctx ends.
func (n *Node) SetRequestHandler(h rpc.Handler) {
	if h == nil {
		n.appHandler.Store(nil)
		return
	}
	n.appHandler.Store(&h)
}

// IncomingRequests returns the channel of application requests for
// asynchronous handling (used when no handler is set). Until it is first
// called, requests are refused. The channel holds Config.RequestQueue
// requests; when it is full further ones are refused and counted.
func (n *Node) IncomingRequests() <-chan *Request {
	n.reqMu.Lock()
	defer n.reqMu.Unlock()
	if n.incoming == nil {
		n.incoming = make(chan *Request, n.cfg.RequestQueue)
	}
	return n.incoming
}

// RegisterProtocol serves proto (rpc.ProtoDHT, ProtoGossip or ProtoRelay)
// with h on every peer connection; nil stops serving it. rpc.ProtoApp
// belongs to SetRequestHandler and IncomingRequests.
func (n *Node) RegisterProtocol(proto byte, h rpc.Handler) error {
	if !rpc.KnownProto(proto) || proto == rpc.ProtoApp {
		return fmt.Errorf("overlay: RegisterProtocol(%d): want rpc.ProtoDHT, ProtoGossip or ProtoRelay", proto)
	}
	n.rpc.Handle(proto, h)
	return nil
}

// Send sends an application request to the peer to and returns its
// response. Without a connection to to, its contact record is resolved
// through the DHT and dialed (through its relays if it is behind NAT).
func (n *Node) Send(ctx context.Context, to pki.Identity, req []byte) ([]byte, error) {
	return n.Call(ctx, to, rpc.ProtoApp, req)
}

// Call sends a request under proto to the peer to over its connection; it
// is Send for internal protocols (DHT, gossip, relay). With no connection,
// the peer's contact record is resolved through the DHT and dialed.
func (n *Node) Call(ctx context.Context, to pki.Identity, proto byte, req []byte) ([]byte, error) {
	if n.peer(to) == nil && n.dht != nil && to != n.id {
		if err := n.ConnectIdentity(ctx, to); err != nil {
			return nil, &rpc.Error{Kind: ErrUnreachable, Detail: "no connection to " + to.Short() + " and no reachable contact record", Cause: err}
		}
	}
	return n.callConnected(ctx, to, proto, req)
}

// callConnected sends a request on the existing connection to to, without
// dialing (gossip and relay traffic go only to connected peers).
func (n *Node) callConnected(ctx context.Context, to pki.Identity, proto byte, req []byte) ([]byte, error) {
	p := n.peer(to)
	if p == nil {
		return nil, &rpc.Error{Kind: ErrUnreachable, Detail: "no connection to " + to.Short()}
	}
	p.Touch()
	return n.rpc.Call(ctx, p.Conn, proto, req)
}

// RPCStats returns the request server's counters.
func (n *Node) RPCStats() rpc.Stats { return n.rpc.Stats() }

// handleApp serves rpc.ProtoApp: the handler if one is set, else the
// IncomingRequests channel, else a refusal.
func (n *Node) handleApp(ctx context.Context, from pki.Identity, req []byte) ([]byte, error) {
	n.touch(from)
	if h := n.appHandler.Load(); h != nil {
		return (*h)(ctx, from, req)
	}
	n.reqMu.Lock()
	ch := n.incoming
	n.reqMu.Unlock()
	if ch == nil {
		n.stats.AppNoHandler.Add(1)
		return nil, rpc.RefuseError("no request handler")
	}
	r := &Request{From: from, Data: req, ctx: ctx, answer: make(chan reqAnswer, 1)}
	select {
	case ch <- r:
	default:
		n.stats.AppQueueFull.Add(1)
		return nil, rpc.RefuseError("request queue full")
	}
	select {
	case a := <-r.answer:
		return a.data, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
