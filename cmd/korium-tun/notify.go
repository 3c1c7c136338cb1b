package main

import (
	"net"
	"os"
)

// sdNotify sends state ("READY=1", "RELOADING=1", "STOPPING=1") to the
// service manager through $NOTIFY_SOCKET, the sd_notify(3) protocol: one
// datagram on a Unix socket, "@" standing for the abstract namespace. It
// reports false, and does nothing, when not started by systemd with
// Type=notify. (These few lines are the whole protocol; go-systemd's
// daemon.SdNotify does the same.)
func sdNotify(state string) (bool, error) { return sdNotifyEnv(os.Getenv("NOTIFY_SOCKET"), state) }

func sdNotifyEnv(path, state string) (bool, error) {
	if path == "" {
		return false, nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, err
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, err
	}
	return true, nil
}
