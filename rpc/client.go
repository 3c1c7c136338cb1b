package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"
)

// DefaultCallTimeout bounds a Call whose ctx has no deadline.
const DefaultCallTimeout = 30 * time.Second

// Call sends req to the peer at the other end of conn under protocol proto
// and returns the response payload. ctx bounds the whole exchange,
// including waiting for a stream when the peer's 64 are in use; without a
// deadline DefaultCallTimeout applies. Every error is an *Error whose Kind
// is one of ErrUnreachable, ErrTimeout, ErrRefused, ErrTooLarge,
// ErrHandler or ErrProtocol.
func Call(ctx context.Context, conn *quic.Conn, proto byte, req []byte) ([]byte, error) {
	return call(ctx, conn, proto, req, MaxMessageSize)
}

// call is Call with limit capping the request and the response.
func call(ctx context.Context, conn *quic.Conn, proto byte, req []byte, limit int) ([]byte, error) {
	switch {
	case conn == nil:
		return nil, newErr(ErrUnreachable, "no connection", nil)
	case !KnownProto(proto):
		return nil, newErr(ErrRefused, fmt.Sprintf("unknown protocol ID %d", proto), nil)
	case len(req) > limit:
		return nil, newErr(ErrTooLarge, fmt.Sprintf("request of %d bytes above %d", len(req), limit), nil)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCallTimeout)
		defer cancel()
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, classify(ctx, conn, err, "waiting for a stream")
	}
	dl, _ := ctx.Deadline()
	str.SetDeadline(dl)
	// Cancellation without a deadline change still unblocks the stream.
	stop := context.AfterFunc(ctx, func() {
		str.CancelWrite(codeCancelled)
		str.CancelRead(codeCancelled)
	})
	defer stop()

	hdr := appendHeader(nil, proto, len(req))
	_, werr := str.Write(hdr)
	if werr == nil {
		_, werr = str.Write(req)
	}
	if werr == nil {
		werr = str.Close()
	}
	// Even when the write failed (the server sent STOP_SENDING because it
	// refused the request early), its answer may be waiting: read it.
	st, payload, err := ReadResponse(str, limit)
	if err != nil {
		str.CancelRead(codeCancelled)
		str.CancelWrite(codeCancelled)
		switch {
		case errors.Is(err, errFrameTooLarge):
			return nil, newErr(ErrTooLarge, "response above the limit", nil)
		case errors.Is(err, errBadStatus), errors.Is(err, errBadVarint):
			return nil, newErr(ErrProtocol, "malformed response", err)
		}
		if werr != nil {
			return nil, classify(ctx, conn, werr, "sending the request")
		}
		return nil, classify(ctx, conn, err, "reading the response")
	}
	if err := expectEOF(str); err != nil {
		str.CancelRead(codeMalformed)
		if errors.Is(err, errTrailing) {
			return nil, newErr(ErrProtocol, "data after the response", err)
		}
	}
	switch st {
	case StatusOK:
		return payload, nil
	case StatusRefused:
		return nil, newErr(ErrRefused, string(payload), nil)
	case StatusTooLarge:
		return nil, newErr(ErrTooLarge, string(payload), nil)
	case StatusTimeout:
		return nil, newErr(ErrTimeout, "remote: "+string(payload), nil)
	default:
		return nil, newErr(ErrHandler, string(payload), nil)
	}
}

// classify turns a stream or connection error into an *Error.
func classify(ctx context.Context, conn *quic.Conn, err error, doing string) error {
	dl, hasDL := ctx.Deadline()
	switch {
	case ctx.Err() != nil:
		return newErr(ErrTimeout, doing, context.Cause(ctx))
	case hasDL && !time.Now().Before(dl):
		// The stream deadline (set to ctx's) fired before ctx's own timer.
		return newErr(ErrTimeout, doing, context.DeadlineExceeded)
	case conn.Context().Err() != nil:
		return newErr(ErrUnreachable, "connection closed while "+doing, err)
	case isTimeout(err):
		return newErr(ErrTimeout, doing, err)
	}
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		return newErr(ErrProtocol, "peer reset the stream while "+doing, err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return newErr(ErrProtocol, "peer closed the stream while "+doing, err)
	}
	return newErr(ErrProtocol, doing, err)
}
