package gossipsub

import (
	"testing"
	"testing/synctest"
	"time"
)

// The simulations run the real router over simNet in virtual time. Their
// figures are recorded in SIMULATION.md; run with -v to print them.

func simulate(t *testing.T, p simParams) simResult {
	var res simResult
	synctest.Test(t, func(t *testing.T) { res = runSim(t, p) })
	t.Logf("%d nodes, %d msgs of %d B, idontwant=%v subnet=%v whitelist=%v: %v", p.nodes, p.msgs, p.size, p.idontwant, p.subnet, p.whitelist, res)
	st := res.stats
	t.Logf("  summed over honest nodes: duplicates %d, IWANT-served %d, IDONTWANT sent %d honoured %d, invalid signatures %d, graylisted RPCs %d, IHAVE excess %d, IWANT excess %d, broken promises %d, send-queue drops %d",
		st.Duplicates, st.IWantServed, st.IDontWantSent, st.IDontWantHonored, st.DropInvalidSignature, st.DropGraylisted,
		st.DropIHaveExcess, st.DropIWantExcess, st.BrokenPromises, st.DropSendQueue)
	return res
}

func TestSimHonest(t *testing.T) {
	res := simulate(t, simParams{nodes: 100, degree: 10, msgs: 100, size: 256, idontwant: true, seed: 1})
	if res.deliveryRatio != 1 {
		t.Fatalf("honest delivery %.4f, want 1", res.deliveryRatio)
	}
	if res.p99 > 2*time.Second {
		t.Errorf("p99 latency %v", res.p99)
	}
	d := DefaultConfig()
	if res.meshMin < d.Dlo || res.meshMax > d.Dhi {
		t.Errorf("mesh sizes %d..%d outside D_lo..D_hi = %d..%d", res.meshMin, res.meshMax, d.Dlo, d.Dhi)
	}
}

func TestSimIDontWant(t *testing.T) {
	off := simulate(t, simParams{nodes: 100, degree: 10, msgs: 40, size: 16 << 10, idontwant: false, seed: 2})
	on := simulate(t, simParams{nodes: 100, degree: 10, msgs: 40, size: 16 << 10, idontwant: true, seed: 2})
	if off.deliveryRatio != 1 || on.deliveryRatio != 1 {
		t.Fatalf("delivery off %.4f on %.4f, want 1", off.deliveryRatio, on.deliveryRatio)
	}
	if on.bytesPerDelivery >= off.bytesPerDelivery {
		t.Fatalf("IDONTWANT did not reduce bytes: on %.0f off %.0f", on.bytesPerDelivery, off.bytesPerDelivery)
	}
	if on.stats.IDontWantHonored == 0 {
		t.Fatal("no IDONTWANT honoured")
	}
	t.Logf("IDONTWANT saves %.1f%% of bytes per delivered message", 100*(1-on.bytesPerDelivery/off.bytesPerDelivery))
}

// TestSimChurn: 10 of 100 nodes leave at once just before publishing; the
// others repair their meshes and still get everything.
func TestSimChurn(t *testing.T) {
	res := simulate(t, simParams{nodes: 100, degree: 10, msgs: 100, size: 256, idontwant: true, churn: 10, seed: 4})
	if res.deliveryRatio < 0.99 {
		t.Fatalf("delivery %.4f among the 90 staying nodes, want >= 0.99", res.deliveryRatio)
	}
}

// testAttack runs an attack: honest delivery must stay >= 99%, and every
// attacker must fall below the publish threshold (out of meshes, gossip and
// flood publishing) at every honest neighbour within 3 heartbeats and
// below the graylist within graylistWithin.
// TestSimPublicSubnet: 100 honest nodes in one public /16, each with about
// 20 peers, all of them in that /16. P6 keeps every peer out of every mesh
// and below the publish threshold, but never graylists one; whitelisting
// the /16 (Score.IPColocationWhitelist) makes it an ordinary network again.
// (Private and loopback addresses need no whitelist; see colocationPrefix.)
func TestSimPublicSubnet(t *testing.T) {
	crowd := simulate(t, simParams{nodes: 100, degree: 10, msgs: 100, size: 256, idontwant: true, subnet: true, seed: 5})
	if crowd.stats.DropGraylisted != 0 {
		t.Errorf("%d RPCs of honest colocated peers dropped as graylisted", crowd.stats.DropGraylisted)
	}
	if crowd.meshMax != 0 {
		t.Errorf("meshes up to %d peers, want none (P6 keeps a crowd of one /16 out)", crowd.meshMax)
	}
	ok := simulate(t, simParams{nodes: 100, degree: 10, msgs: 100, size: 256, idontwant: true, subnet: true, whitelist: true, seed: 5})
	if ok.deliveryRatio != 1 {
		t.Errorf("whitelisted subnet: delivery %.4f, want 1", ok.deliveryRatio)
	}
	if d := DefaultConfig(); ok.meshMin < d.Dlo {
		t.Errorf("whitelisted subnet: smallest mesh %d < D_lo", ok.meshMin)
	}
}

func testAttack(t *testing.T, a attack, graylistWithin time.Duration) {
	res := simulate(t, simParams{nodes: 100, degree: 10, msgs: 100, size: 256, idontwant: true, attack: a, seed: 3})
	if res.deliveryRatio < 0.99 {
		t.Errorf("honest delivery %.4f under attack, want >= 0.99", res.deliveryRatio)
	}
	if res.attackersExcluded != res.attackers {
		t.Errorf("%d of %d attackers below the publish threshold at every neighbour", res.attackersExcluded, res.attackers)
	}
	if res.excludedAfter > 3*time.Second {
		t.Errorf("excluding the attackers took %v, want within 3 heartbeats", res.excludedAfter)
	}
	if res.attackersGraylist != res.attackers {
		t.Errorf("%d of %d attackers graylisted at every neighbour", res.attackersGraylist, res.attackers)
	}
	if res.graylistAfter > graylistWithin {
		t.Errorf("graylisting took %v, want within %v", res.graylistAfter, graylistWithin)
	}
}

func TestSimAttackInvalidSignatures(t *testing.T) { testAttack(t, attackInvalidSig, 3*time.Second) }
func TestSimAttackGossipSpam(t *testing.T)        { testAttack(t, attackGossipSpam, 3*time.Second) }

// TestSimAttackSybils: 20 sybils in one /16 are excluded at once by P6,
// which alone never graylists (capped at -75); their GRAFTs during the
// backoff (P7) graylist them after the fourth, a second apart.
func TestSimAttackSybils(t *testing.T) { testAttack(t, attackSybils, 6*time.Second) }

// BenchmarkSim1000 runs the honest and IDONTWANT simulations with 1,000
// nodes. synctest needs a *testing.T, so the scenario runs as an internal
// test of its own.
func BenchmarkSim1000(b *testing.B) {
	for _, c := range []struct {
		name string
		p    simParams
	}{
		{"honest-256B", simParams{nodes: 1000, degree: 10, msgs: 30, size: 256, idontwant: true, seed: 11}},
		{"16KiB-idontwant-off", simParams{nodes: 1000, degree: 10, msgs: 20, size: 16 << 10, idontwant: false, seed: 12}},
		{"16KiB-idontwant-on", simParams{nodes: 1000, degree: 10, msgs: 20, size: 16 << 10, idontwant: true, seed: 12}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				var res simResult
				ok := testing.RunTests(func(string, string) (bool, error) { return true, nil },
					[]testing.InternalTest{{Name: "Sim1000/" + c.name, F: func(t *testing.T) {
						synctest.Test(t, func(t *testing.T) { res = runSim(t, c.p) })
					}}})
				if !ok {
					b.Fatal("simulation failed")
				}
				b.ReportMetric(100*res.deliveryRatio, "delivery%")
				b.ReportMetric(float64(res.p50.Milliseconds()), "p50-ms")
				b.ReportMetric(float64(res.p99.Milliseconds()), "p99-ms")
				b.ReportMetric(res.dupsPerDelivery, "dups/delivery")
				b.ReportMetric(res.bytesPerDelivery, "bytes/delivery")
				b.Logf("%s: %v", c.name, res)
			}
		})
	}
}
