//go:build linux

package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
)

func TestGenkeyPubkeyRoundTrip(t *testing.T) {
	var out bytes.Buffer
	if err := genkey(&out); err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out.String())
	if len(f) != 2 {
		t.Fatalf("genkey printed %q, want two keys", out.String())
	}
	var pub bytes.Buffer
	if err := pubkey(strings.NewReader(f[0]+"\n"), &pub); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(pub.String()); got != f[1] {
		t.Fatalf("pubkey(private) = %s, genkey said %s", got, f[1])
	}
}

func TestDecodeKeyRejectsBadKeys(t *testing.T) {
	for _, k := range []string{"", "not base64!", base64.StdEncoding.EncodeToString(make([]byte, 31))} {
		if _, err := decodeKey(k); err == nil {
			t.Errorf("decodeKey(%q) succeeded", k)
		}
	}
}

func TestUAPIConfig(t *testing.T) {
	priv := bytes.Repeat([]byte{1}, 32)
	peer := bytes.Repeat([]byte{2}, 32)
	c := &config{listenPort: 51820, peerEndpoint: "[2001:db8:1::2]:51820", keepalive: 5}
	got, err := uapiConfig(c, priv, peer, []netip.Prefix{netip.MustParsePrefix("2001:db8:2::/64")})
	if err != nil {
		t.Fatal(err)
	}
	want := "private_key=" + hex.EncodeToString(priv) + "\n" +
		"listen_port=51820\n" +
		"replace_peers=true\n" +
		"public_key=" + hex.EncodeToString(peer) + "\n" +
		"endpoint=[2001:db8:1::2]:51820\n" +
		"persistent_keepalive_interval=5\n" +
		"replace_allowed_ips=true\n" +
		"allowed_ip=2001:db8:2::/64\n"
	if got != want {
		t.Fatalf("uapiConfig:\n%s\nwant:\n%s", got, want)
	}
	c.peerEndpoint = "198.18.1.2" // no port
	if _, err := uapiConfig(c, priv, peer, nil); err == nil {
		t.Fatal("endpoint without port accepted")
	}
}
