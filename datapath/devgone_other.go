//go:build !linux

package datapath

import "syscall"

// goneErrnos are the device errors after which it never works again.
var goneErrnos = []error{syscall.ENODEV, syscall.ENXIO}
