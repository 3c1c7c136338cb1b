//go:build !linux

package tun

import (
	"fmt"
	"runtime"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Create is implemented on Linux only: elsewhere a node runs on its
// in-process netstack device (overlay.Config with no Device).
func Create(Config) (wgtun.Device, error) {
	return nil, fmt.Errorf("the kernel TUN device is supported on Linux only, not %s; use the in-process netstack (the Go API)", runtime.GOOS)
}
