//go:build !linux

package main

import (
	"context"
	"log/slog"
	"net/netip"
)

// registerResolved: systemd-resolved exists only on Linux.
func registerResolved(context.Context, *slog.Logger, string, netip.AddrPort) (bool, error) {
	return false, nil
}
