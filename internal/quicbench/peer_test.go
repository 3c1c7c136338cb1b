//go:build linux

package quicbench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	quic "github.com/korium/korium-tun/third_party/quic-go"
)

// The child process: QUICBENCH_PEER names its role, QUICBENCH_ADDR the
// parent's listening address.
const (
	envPeer = "QUICBENCH_PEER"
	envAddr = "QUICBENCH_ADDR"
	envProf = "QUICBENCH_MEMPROFILE" // the child's memProfile

	roleSink   = "sink"   // receives only
	roleSource = "source" // sends on request, receives too
)

// quiet is how long a receiver waits after the last datagram before it
// counts the rest as lost.
const quiet = 300 * time.Millisecond

func TestMain(m *testing.M) {
	if role := os.Getenv(envPeer); role != "" {
		if err := runPeer(role, os.Getenv(envAddr)); err != nil {
			fmt.Fprintln(os.Stderr, "quicbench peer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Control messages on the stream the child opens: the parent sends
// op + count; the child answers 'E' with a report.
const (
	opStart = 'S' // snapshot usage; a source also starts sending count datagrams
	opEnd   = 'E' // wait for count datagrams (or quiet), then report
)

type report struct {
	got, bad, sent uint64
	use            usage
	span           time.Duration // from the start to the last arrival
}

const reportLen = 6 * 8

func (r report) marshal() []byte {
	b := make([]byte, 0, reportLen)
	for _, v := range []uint64{r.got, r.bad, r.sent, r.use.mallocs, uint64(r.use.cpu), uint64(r.span)} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

func unmarshalReport(b []byte) report {
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return report{got: u(0), bad: u(1), sent: u(2), use: usage{mallocs: u(3), cpu: time.Duration(u(4))}, span: time.Duration(u(5))}
}

// runPeer is the child: it dials the parent, opens the control stream and
// obeys it until the parent closes the connection. It exits on its own
// after five minutes whatever happens.
func runPeer(role, addr string) error {
	if role == roleIdleDialer || role == roleIdleServer {
		return runIdlePeer(role, addr)
	}
	time.AfterFunc(5*time.Minute, func() { os.Exit(3) })
	prof := os.Getenv(envProf)
	if prof != "" {
		runtime.MemProfileRate = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	e, err := dial(ctx, addr)
	cancel()
	if err != nil {
		return err
	}
	defer e.close()
	ctl, err := e.conn.OpenStream()
	if err != nil {
		return err
	}
	if _, err := ctl.Write([]byte{'R'}); err != nil {
		return err
	}
	r := receive(e.conn)
	var (
		start      usage
		startAt    time.Duration
		got0, bad0 uint64
		seq, sent  uint64
		sendDone   chan error
		cmd        [9]byte
	)
	for {
		if _, err := io.ReadFull(ctl, cmd[:]); err != nil {
			return nil // the parent is done
		}
		n := binary.LittleEndian.Uint64(cmd[1:])
		switch cmd[0] {
		case opStart:
			// got0 was taken at the last report: a datagram may overtake
			// this stream frame, and it belongs to this phase.
			sent = 0
			if prof != "" {
				writeMemProfile(prof + ".start")
			}
			start, startAt = snapshot(), now()
			if role == roleSource && n > 0 {
				sendDone = make(chan error, 1)
				go func(seq uint64) { sendDone <- send(e.conn, seq, int(n)) }(seq)
				seq += n
				sent = n
			}
		case opEnd:
			if sendDone != nil {
				if err := <-sendDone; err != nil {
					return err
				}
				sendDone = nil
			}
			got := r.waitFor(got0+n, quiet) - got0
			rep := report{got: got, bad: r.bad.Load() - bad0, sent: sent, use: snapshot().since(start),
				span: r.span(startAt)}
			if prof != "" {
				writeMemProfile(prof + ".end")
			}
			got0, bad0 = r.got.Load(), r.bad.Load()
			if _, err := ctl.Write(rep.marshal()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown control op %q", cmd[0])
		}
	}
}

// peerProc is the parent's handle on a child and its connection to it.
type peerProc struct {
	cmd *exec.Cmd
	ep  *endpoint
	ctl *quic.Stream
	r   *receiver
}

func startPeer(tb testing.TB, role string) *peerProc {
	tb.Helper()
	ep, err := listen()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envPeer+"="+role, envAddr+"="+ep.udp.LocalAddr().String())
	if *memProfile != "" {
		cmd.Env = append(cmd.Env, envProf+"="+*memProfile+".child")
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		ep.close()
		tb.Fatal(err)
	}
	p := &peerProc{cmd: cmd, ep: ep}
	tb.Cleanup(p.stop)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if ep.conn, err = ep.ln.Accept(ctx); err != nil {
		tb.Fatal("child did not connect:", err)
	}
	if p.ctl, err = ep.conn.AcceptStream(ctx); err != nil {
		tb.Fatal("child opened no control stream:", err)
	}
	var ready [1]byte
	if _, err := io.ReadFull(p.ctl, ready[:]); err != nil {
		tb.Fatal(err)
	}
	p.r = receive(ep.conn)
	return p
}

// stop closes the connection (the child then exits) and waits for the
// child, killing it if it does not exit in time.
func (p *peerProc) stop() {
	p.ep.close()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func (p *peerProc) op(tb testing.TB, op byte, n uint64) {
	var b [9]byte
	b[0] = op
	binary.LittleEndian.PutUint64(b[1:], n)
	if _, err := p.ctl.Write(b[:]); err != nil {
		tb.Fatal(err)
	}
}

// start tells the child to snapshot its usage and, if it is a source, to
// send n datagrams.
func (p *peerProc) start(tb testing.TB, n int) { p.op(tb, opStart, uint64(n)) }

// end tells the child that the parent sent n datagrams and returns its
// report once it has them (or stopped waiting).
func (p *peerProc) end(tb testing.TB, n int) report {
	p.op(tb, opEnd, uint64(n))
	var b [reportLen]byte
	p.ctl.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(p.ctl, b[:]); err != nil {
		tb.Fatal("no report from the child:", err)
	}
	return unmarshalReport(b[:])
}

// warmup is the datagram count run before measuring, so the figures are
// of the steady state: the handshake is over, buffers, queues and ring
// buffers have grown, congestion control has opened up.
const warmup = 5000

// perDatagram divides, and gives 0 for 0 datagrams.
func perDatagram(v, n uint64) float64 {
	if n == 0 {
		return 0
	}
	return float64(v) / float64(n)
}

// measured runs run once to warm up, then for b.N with the timer and the
// allocation profiles (-quicbench.memprofile) around it.
func measured[T any](b *testing.B, run func(n int) T) T {
	run(warmup)
	b.ReportAllocs()
	if *memProfile != "" {
		writeMemProfile(*memProfile + ".start")
	}
	b.ResetTimer()
	r := run(b.N)
	b.StopTimer()
	if *memProfile != "" {
		writeMemProfile(*memProfile + ".end")
	}
	return r
}

// result is one measured run as the parent saw it, with the child's report.
type result struct {
	rep      report
	got, bad uint64        // datagrams the parent received, damaged ones
	use      usage         // the parent's
	el       time.Duration // from the start to the last arrival
}

// BenchmarkSend: this process sends b.N datagrams of payloadSize bytes, a
// child receives them. allocs/op and tx-* are the sender's; rx-* the
// receiver's, per datagram that arrived.
func BenchmarkSend(b *testing.B) {
	p := startPeer(b, roleSink)
	r := measured(b, func(n int) result {
		p.start(b, 0)
		u0 := snapshot()
		if err := send(p.ep.conn, 0, n); err != nil {
			b.Fatal(err)
		}
		rep := p.end(b, n)
		return result{rep: rep, use: snapshot().since(u0)}
	})
	reportOneWay(b, uint64(b.N), r.rep.got, r.rep.bad, r.use, r.rep.use, r.rep.span)
}

// receiveRun has the child send n datagrams to this process, which sends
// n of its own at the same time if both is set.
func receiveRun(b *testing.B, p *peerProc, n int, both bool) result {
	got0, bad0 := p.r.got.Load(), p.r.bad.Load()
	u0, t0 := snapshot(), now()
	p.start(b, n)
	sent := 0
	if both {
		if err := send(p.ep.conn, uint64(n), n); err != nil {
			b.Fatal(err)
		}
		sent = n
	}
	got := p.r.waitFor(got0+uint64(n), quiet) - got0
	use, el := snapshot().since(u0), p.r.span(t0)
	rep := p.end(b, sent)
	return result{rep: rep, got: got, bad: p.r.bad.Load() - bad0, use: use, el: max(el, rep.span)}
}

// BenchmarkReceive: a child sends b.N datagrams, this process receives
// them. allocs/op and rx-* are the receiver's; tx-* the sender's.
func BenchmarkReceive(b *testing.B) {
	p := startPeer(b, roleSource)
	r := measured(b, func(n int) result { return receiveRun(b, p, n, false) })
	reportOneWay(b, r.rep.sent, r.got, r.bad, r.rep.use, r.use, r.el)
}

func reportOneWay(b *testing.B, sent, got, bad uint64, tx, rx usage, el time.Duration) {
	if bad > 0 {
		b.Fatalf("%d of %d datagrams arrived damaged", bad, got)
	}
	if got == 0 {
		b.Fatal("no datagram arrived")
	}
	b.ReportMetric(perDatagram(tx.mallocs, sent), "tx-allocs/dgram")
	b.ReportMetric(perDatagram(rx.mallocs, got), "rx-allocs/dgram")
	b.ReportMetric(perDatagram(uint64(tx.cpu), sent), "tx-cpu-ns/dgram")
	b.ReportMetric(perDatagram(uint64(rx.cpu), got), "rx-cpu-ns/dgram")
	b.ReportMetric(100*(1-float64(got)/float64(sent)), "loss-%")
	b.ReportMetric(float64(el.Nanoseconds())/float64(got), "ns/dgram")
	b.ReportMetric(float64(got)*payloadSize*8/el.Seconds()/1e6, "Mbit/s")
}

// BenchmarkBoth: this process and a child each send b.N datagrams to the
// other at once. The figures are per datagram handled (sent or received)
// by one process.
func BenchmarkBoth(b *testing.B) {
	p := startPeer(b, roleSource)
	r := measured(b, func(n int) result { return receiveRun(b, p, n, true) })
	rep, got, bad, use, el := r.rep, r.got, r.bad, r.use, r.el
	if bad+rep.bad > 0 {
		b.Fatalf("%d datagrams arrived damaged", bad+rep.bad)
	}
	if got == 0 || rep.got == 0 {
		b.Fatalf("no datagram arrived (N=%d, parent got %d, child got %d)", b.N, got, rep.got)
	}
	n := uint64(b.N)
	b.ReportMetric(perDatagram(use.mallocs, n+got), "parent-allocs/dgram")
	b.ReportMetric(perDatagram(rep.use.mallocs, n+rep.got), "child-allocs/dgram")
	b.ReportMetric(perDatagram(uint64(use.cpu), n+got), "parent-cpu-ns/dgram")
	b.ReportMetric(perDatagram(uint64(rep.use.cpu), n+rep.got), "child-cpu-ns/dgram")
	b.ReportMetric(100*(1-float64(got+rep.got)/float64(2*n)), "loss-%")
	b.ReportMetric(float64(el.Nanoseconds())/float64(n), "ns/dgram")
	b.ReportMetric(float64(got+rep.got)*payloadSize*8/el.Seconds()/1e6, "Mbit/s")
}
