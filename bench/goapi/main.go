// Command goapi measures one TCP stream between two in-process korium-tun
// nodes (netstack to netstack over loopback UDP) against its anchor, two
// wireguard-go devices on wireguard-go's own tun/netstack peered over
// loopback, the way a program that imports both modules builds them. The two
// run interleaved, each transfer on a fresh pair, every byte checked, and
// each round prints both figures and their ratio: on a busy machine only a
// ratio from the same round means anything.
//
//	go run . -rounds 3 -size 512
//	go run . -modes korium -cpuprofile cpu.out   # profile ours alone
package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	wgnetstack "golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/korium/korium-tun/overlay"
	"github.com/korium/korium-tun/overlay/netstack"
	"github.com/korium/korium-tun/pki"
	"github.com/korium/korium-tun/smartaddr"
)

// patternLen is the period of the data sent: a pseudo-random block larger
// than any TCP window, so that lost, duplicated or reordered bytes never
// compare equal.
const patternLen = 16 << 20

// chunk is how much the sender writes and the receiver reads per call.
const chunk = 256 << 10

const port = 5201

func main() {
	var (
		rounds    = flag.Int("rounds", 3, "interleaved rounds")
		sizeMiB   = flag.Int("size", 512, "MiB per transfer")
		modes     = flag.String("modes", "wg,korium", "comma-separated modes in round order: wg, korium")
		wgMTU     = flag.Int("wg-mtu", 1420, "MTU of the wireguard-go devices (wg-quick's default)")
		koMTU     = flag.Int("korium-mtu", 0, "MTU of the korium-tun nodes (0: overlay.DefaultMTU)")
		powBits   = flag.Int("pow-bits", 8, "proof-of-work bits of the korium-tun keys")
		timeout   = flag.Duration("timeout", 5*time.Minute, "give up on one transfer after this long")
		cpuProf   = flag.String("cpuprofile", "", "write CPU profiles of each mode's first transfer (not the setup) to FILE.MODE")
		memProf   = flag.String("memprofile", "", "write allocation profiles around each mode's first transfer to FILE.MODE.before and FILE.MODE (go tool pprof -sample_index=alloc_objects -diff_base FILE.MODE.before)")
		jsonPath  = flag.String("json", "", "also write the figures as JSON to FILE")
		tracePath = flag.String("trace", "", "write an execution trace of one second in the middle of each mode's first transfer to FILE.MODE (go tool trace -pprof=sync)")
		verbose   = flag.Bool("v", false, "print the tunnel's packet counts after each transfer (korium: on devices that count the packet loop's batches)")
	)
	flag.Parse()
	if *memProf != "" {
		runtime.MemProfileRate = 16 << 10
	}
	log.SetFlags(0)
	log.SetPrefix("goapi: ")
	if *rounds < 1 || *sizeMiB < 1 {
		log.Fatal("-rounds and -size must be at least 1")
	}
	ml := strings.Split(*modes, ",")
	for _, m := range ml {
		if m != "wg" && m != "korium" {
			log.Fatalf("unknown mode %q in -modes (wg, korium)", m)
		}
	}
	size := int64(*sizeMiB) << 20
	pattern := make([]byte, patternLen)
	r := mrand.NewChaCha8([32]byte{'k', 'o', 'r', 'i', 'u', 'm'})
	r.Read(pattern)

	res := results{Size: size, WGMTU: *wgMTU, KoriumMTU: *koMTU, GOMAXPROCS: runtime.GOMAXPROCS(0)}
	if res.KoriumMTU == 0 {
		res.KoriumMTU = overlay.DefaultMTU
	}
	for round := range *rounds {
		row := map[string]figure{}
		for _, m := range ml {
			var p *pair
			var err error
			switch m {
			case "wg":
				p, err = newWGPair(*wgMTU)
			case "korium":
				p, err = newKoriumPair(*koMTU, *powBits, *verbose)
			}
			if err != nil {
				log.Fatalf("round %d %s: setup: %v", round+1, m, err)
			}
			var prof *os.File
			if *cpuProf != "" && round == 0 {
				if prof, err = os.Create(*cpuProf + "." + m); err != nil {
					log.Fatal(err)
				}
				if err := pprof.StartCPUProfile(prof); err != nil {
					log.Fatal(err)
				}
			}
			if *memProf != "" && round == 0 {
				runtime.GC()
				writeAllocs(*memProf + "." + m + ".before")
			}
			var traced chan struct{}
			if *tracePath != "" && round == 0 {
				traced = make(chan struct{})
				go traceWindow(*tracePath+"."+m, traced)
			}
			f, err := p.transfer(pattern, size, *timeout)
			if traced != nil {
				<-traced
			}
			if prof != nil {
				pprof.StopCPUProfile()
				prof.Close()
			}
			if *memProf != "" && round == 0 {
				runtime.GC()
				writeAllocs(*memProf + "." + m)
			}
			if err == nil && *verbose && p.stats != nil {
				fmt.Printf("round %d  %-7s %s\n", round+1, m, p.stats(size))
			}
			p.close()
			if err != nil {
				log.Fatalf("round %d %s: %v", round+1, m, err)
			}
			row[m] = f
			fmt.Printf("round %d  %-7s %6.2f Gbit/s  %5.2f CPU-s/GiB on %.2f cores  %6.0f allocs/MiB\n", round+1, m, f.Gbps, f.CPUPerGiB, f.Cores, f.AllocsPerMiB)
		}
		res.Rounds = append(res.Rounds, row)
		if wg, ok := row["wg"]; ok {
			if ko, ok := row["korium"]; ok {
				fmt.Printf("round %d  ratio korium/wg %.2f (CPU per byte wg/korium %.2f)\n", round+1, ko.Gbps/wg.Gbps, wg.CPUPerGiB/ko.CPUPerGiB)
			}
		}
	}
	res.summarize(ml)
	fmt.Print(res.Summary)
	if *jsonPath != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*jsonPath, append(b, '\n'), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// traceWindow writes an execution trace of the second after the first
// one of a transfer: where goroutines wait shows what the stream waits on.
func traceWindow(path string, done chan<- struct{}) {
	defer close(done)
	time.Sleep(time.Second)
	f, err := os.Create(path)
	if err != nil {
		log.Print(err)
		return
	}
	defer f.Close()
	if err := trace.Start(f); err != nil {
		log.Print(err)
		return
	}
	time.Sleep(time.Second)
	trace.Stop()
}

// writeAllocs writes the heap profile, whose allocation counts only grow:
// the difference of two (go tool pprof -diff_base) is what happened between.
func writeAllocs(path string) {
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		log.Fatal(err)
	}
}

// figure is one transfer's result.
type figure struct {
	Gbps    float64 `json:"gbps"`
	Seconds float64 `json:"seconds"`
	// CPUPerGiB is the CPU time the whole process (both ends, the
	// tunnel, the check) spent per GiB: unlike Gbps it barely depends
	// on how much of the machine other programs take.
	CPUPerGiB float64 `json:"cpu_seconds_per_gib"`
	// Cores is CPU time over wall time: below GOMAXPROCS on an idle
	// machine means the stream waits on something other than CPU.
	Cores        float64 `json:"cores"`
	AllocsPerMiB float64 `json:"allocs_per_mib"`
}

type results struct {
	Size       int64               `json:"bytes"`
	WGMTU      int                 `json:"wg_mtu"`
	KoriumMTU  int                 `json:"korium_mtu"`
	GOMAXPROCS int                 `json:"gomaxprocs"`
	Rounds     []map[string]figure `json:"rounds"`
	Median     map[string]float64  `json:"median_gbps"`
	Ratios     []float64           `json:"ratios,omitempty"`     // korium/wg Gbit/s per round
	CPURatios  []float64           `json:"cpu_ratios,omitempty"` // wg/korium CPU per byte per round
	Summary    string              `json:"-"`
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (r *results) summarize(modes []string) {
	var b strings.Builder
	r.Median = map[string]float64{}
	for _, m := range modes {
		var v []float64
		for _, row := range r.Rounds {
			v = append(v, row[m].Gbps)
		}
		r.Median[m] = median(v)
		fmt.Fprintf(&b, "%-7s median %.2f Gbit/s (min %.2f, max %.2f)\n", m, median(v), slices.Min(v), slices.Max(v))
	}
	for _, row := range r.Rounds {
		wg, ok1 := row["wg"]
		ko, ok2 := row["korium"]
		if ok1 && ok2 {
			r.Ratios = append(r.Ratios, ko.Gbps/wg.Gbps)
			r.CPURatios = append(r.CPURatios, wg.CPUPerGiB/ko.CPUPerGiB)
		}
	}
	if len(r.Ratios) > 0 {
		fmt.Fprintf(&b, "ratio korium/wg median %.2f (min %.2f, max %.2f)\n", median(r.Ratios), slices.Min(r.Ratios), slices.Max(r.Ratios))
		fmt.Fprintf(&b, "CPU per byte wg/korium median %.2f (min %.2f, max %.2f)\n", median(r.CPURatios), slices.Min(r.CPURatios), slices.Max(r.CPURatios))
	}
	r.Summary = b.String()
}

// pair is two connected endpoints: dial reaches ln across the tunnel.
type pair struct {
	ln    net.Listener
	dial  func(ctx context.Context) (net.Conn, error)
	close func()
	// stats, if set, describes the tunnel's packet counts after a
	// transfer (printed with -v).
	stats func(size int64) string
}

// transfer sends size bytes of pattern over one TCP connection, checks
// every byte on the receiving side and times the stream from the first
// write to the last byte checked.
func (p *pair) transfer(pattern []byte, size int64, timeout time.Duration) (figure, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	type rx struct {
		n   int64
		end time.Time
		err error
	}
	done := make(chan rx, 1)
	go func() {
		c, err := p.ln.Accept()
		if err != nil {
			done <- rx{err: err}
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(timeout))
		n, err := verify(c, pattern, size)
		done <- rx{n: n, end: time.Now(), err: err}
	}()
	var c net.Conn
	for { // the first SYN can race the tunnel's handshake
		var err error
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		c, err = p.dial(dctx)
		dcancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return figure{}, fmt.Errorf("dial: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(timeout))
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0 := cpuTime()
	start := time.Now()
	if err := send(c, pattern, size); err != nil {
		return figure{}, fmt.Errorf("send: %w", err)
	}
	var r rx
	select {
	case r = <-done:
	case <-ctx.Done():
		return figure{}, errors.New("receiver timed out")
	}
	runtime.ReadMemStats(&ms1)
	cpu := cpuTime() - cpu0
	if r.err != nil {
		return figure{}, fmt.Errorf("receive after %d bytes: %w", r.n, r.err)
	}
	el := r.end.Sub(start).Seconds()
	return figure{
		Gbps:         float64(size) * 8 / el / 1e9,
		Seconds:      el,
		CPUPerGiB:    cpu.Seconds() / (float64(size) / (1 << 30)),
		Cores:        cpu.Seconds() / el,
		AllocsPerMiB: float64(ms1.Mallocs-ms0.Mallocs) / float64(size>>20),
	}, nil
}

func send(c net.Conn, pattern []byte, size int64) error {
	var off int64
	for off < size {
		i := int(off % int64(len(pattern)))
		n := min(int64(chunk), size-off, int64(len(pattern)-i))
		if _, err := c.Write(pattern[i : i+int(n)]); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// verify reads exactly size bytes from c and compares them with the
// repeated pattern; it then expects EOF or nothing more.
func verify(c net.Conn, pattern []byte, size int64) (int64, error) {
	buf := make([]byte, chunk)
	var off int64
	for off < size {
		k, err := c.Read(buf[:min(int64(len(buf)), size-off)])
		for got := buf[:k]; len(got) > 0; {
			i := int(off % int64(len(pattern)))
			n := min(len(got), len(pattern)-i)
			if !bytes.Equal(got[:n], pattern[i:i+n]) {
				return off, fmt.Errorf("data differs at or after byte %d", off)
			}
			got, off = got[n:], off+int64(n)
		}
		if err != nil {
			if err == io.EOF && off < size {
				err = io.ErrUnexpectedEOF
			}
			if off < size {
				return off, err
			}
		}
	}
	return off, nil
}

// ---- korium-tun: two nodes on loopback UDP, netstack devices -----------------

// newKoriumPair makes two nodes on their default netstack devices, or with
// count on devices that count the packet loop's batches.
func newKoriumPair(mtu, powBits int, count bool) (*pair, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var nodes []*overlay.Node
	var devs []*countingStack
	closeAll := func() {
		for _, n := range nodes {
			n.Close()
		}
	}
	for range 2 {
		kp, err := pki.GenerateKeypair(ctx, powBits)
		if err != nil {
			closeAll()
			return nil, err
		}
		cfg := overlay.Config{Keypair: kp, PoWBits: powBits, Listen: "127.0.0.1:0", MTU: mtu}
		if count {
			s, err := netstack.New(netstack.Config{Addr: smartaddr.FromIdentity(kp.Identity()), MTU: cmp.Or(mtu, overlay.DefaultMTU)})
			if err != nil {
				closeAll()
				return nil, err
			}
			dev := &countingStack{Stack: s}
			devs = append(devs, dev)
			cfg.Device = dev
		}
		n, err := overlay.New(cfg)
		if err != nil {
			closeAll()
			return nil, err
		}
		nodes = append(nodes, n)
	}
	a, b := nodes[0], nodes[1]
	if err := a.Connect(ctx, b.Contact(netip.MustParseAddr("127.0.0.1"))); err != nil {
		closeAll()
		return nil, fmt.Errorf("connect: %w", err)
	}
	ln, err := b.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		closeAll()
		return nil, err
	}
	dst := netip.AddrPortFrom(b.Addr(), port).String()
	return &pair{
		ln:    ln,
		dial:  func(ctx context.Context) (net.Conn, error) { return a.DialContext(ctx, "tcp", dst) },
		close: func() { ln.Close(); closeAll() },
		stats: func(size int64) string {
			var sb strings.Builder
			mib := float64(size >> 20)
			for i, n := range []*overlay.Node{a, b} {
				if i < len(devs) {
					fmt.Fprintf(&sb, "[%s] ", devs[i])
				}
				st := n.Status()
				for _, p := range st.Peers {
					fmt.Fprintf(&sb, "[%s: IP tx %.0f rx %.0f, UDP rx %.0f, sendmsg %.0f per MiB; QUIC lost %d] ", n.Addr().String()[:19],
						float64(p.TxPackets)/mib, float64(p.RxPackets)/mib, float64(st.SmartSock.RxQUIC)/mib, float64(st.SmartSock.TxCalls)/mib, p.QUICLost)
				}
			}
			return sb.String()
		},
	}, nil
}

// ---- wireguard-go: two devices on its tun/netstack, peered over loopback -----

// Inner addresses of the wireguard pair; they exist only inside the two
// in-process stacks.
var (
	wgAddrA = netip.MustParseAddr("fd00:77::1")
	wgAddrB = netip.MustParseAddr("fd00:77::2")
)

type wgNode struct {
	dev  *device.Device
	tnet *wgnetstack.Net
	priv *ecdh.PrivateKey
	port int
}

func newWGNode(addr netip.Addr, mtu int) (*wgNode, error) {
	tdev, tnet, err := wgnetstack.CreateNetTUN([]netip.Addr{addr}, nil, mtu)
	if err != nil {
		return nil, err
	}
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		tdev.Close()
		return nil, err
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	if err := dev.IpcSet("private_key=" + hex.EncodeToString(priv.Bytes()) + "\nlisten_port=0\n"); err != nil {
		dev.Close()
		return nil, err
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, err
	}
	cfg, err := dev.IpcGet()
	if err != nil {
		dev.Close()
		return nil, err
	}
	n := &wgNode{dev: dev, tnet: tnet, priv: priv}
	for _, l := range strings.Split(cfg, "\n") {
		if v, ok := strings.CutPrefix(l, "listen_port="); ok {
			n.port, _ = strconv.Atoi(v)
		}
	}
	if n.port == 0 {
		dev.Close()
		return nil, errors.New("wireguard device reports no listen port")
	}
	return n, nil
}

func (n *wgNode) addPeer(o *wgNode, oAddr netip.Addr) error {
	return n.dev.IpcSet(fmt.Sprintf("public_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=%s/128\n",
		hex.EncodeToString(o.priv.PublicKey().Bytes()), o.port, oAddr))
}

func newWGPair(mtu int) (*pair, error) {
	a, err := newWGNode(wgAddrA, mtu)
	if err != nil {
		return nil, err
	}
	b, err := newWGNode(wgAddrB, mtu)
	if err != nil {
		a.dev.Close()
		return nil, err
	}
	closeAll := func() { a.dev.Close(); b.dev.Close() }
	if err := errors.Join(a.addPeer(b, wgAddrB), b.addPeer(a, wgAddrA)); err != nil {
		closeAll()
		return nil, err
	}
	ln, err := b.tnet.ListenTCPAddrPort(netip.AddrPortFrom(wgAddrB, port))
	if err != nil {
		closeAll()
		return nil, err
	}
	dst := netip.AddrPortFrom(wgAddrB, port)
	return &pair{
		ln:    ln,
		dial:  func(ctx context.Context) (net.Conn, error) { return a.tnet.DialContextTCPAddrPort(ctx, dst) },
		close: func() { ln.Close(); closeAll() },
	}, nil
}
