//go:build !linux

package main

import "os"

// canCreateTUN: elsewhere, creating a TUN device needs root.
func canCreateTUN() bool { return os.Geteuid() == 0 }
