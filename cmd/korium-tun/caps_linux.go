package main

import "golang.org/x/sys/unix"

// canCreateTUN reports whether this process may create and configure a TUN
// device: CAP_NET_ADMIN in its effective set. Root has it; so does a
// service given AmbientCapabilities=CAP_NET_ADMIN, or a binary given it with
// setcap.
func canCreateTUN() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_NET_ADMIN/32].Effective&(1<<(unix.CAP_NET_ADMIN%32)) != 0
}
