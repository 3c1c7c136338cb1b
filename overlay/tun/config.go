package tun

import "net/netip"

// DefaultName is the device name when none is given.
const DefaultName = "korium0"

// Config describes the device.
type Config struct {
	Name string     // default DefaultName
	MTU  int        // required
	Addr netip.Addr // the node's SmartAddr; required
}
