package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/korium/korium-tun/firewall"
)

// The firewall's drops join drops_total under layer "firewall"; what it
// passes and the flows it tracks have their own series.
func TestCollectFirewall(t *testing.T) {
	n, src := testSources()
	n.st.Firewall = &firewall.Stats{Passed: map[string]uint64{"flow": 7, "icmp": 1}, Dropped: map[string]uint64{"no_rule": 3, "spoofed": 0},
		Flows: 5, MaxFlows: 64, Evicted: 2}
	c := NewCollector(src)
	want := `
# HELP korium_firewall_flows Flows the firewall tracks now (expired ones not yet reclaimed included).
# TYPE korium_firewall_flows gauge
korium_firewall_flows 5
# HELP korium_firewall_passed_total Inbound packets the firewall let through, by why (flow, rule, default, icmp).
# TYPE korium_firewall_passed_total counter
korium_firewall_passed_total{reason="flow"} 7
korium_firewall_passed_total{reason="icmp"} 1
# HELP korium_firewall_flows_evicted_total Live flows the firewall's full table pushed out for new ones.
# TYPE korium_firewall_flows_evicted_total counter
korium_firewall_flows_evicted_total 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "korium_firewall_flows", "korium_firewall_passed_total", "korium_firewall_flows_evicted_total"); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := -1.0
	for _, mf := range mfs {
		if mf.GetName() != "korium_drops_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["layer"] == "firewall" && l["reason"] == "no_rule" {
				got = m.GetCounter().GetValue()
			}
		}
	}
	if got != 3 {
		t.Fatalf(`drops_total{layer="firewall",reason="no_rule"} = %v, want 3`, got)
	}
}
