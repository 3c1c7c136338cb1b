//go:build !linux

package smartsock

// Without UDP GSO (every platform but Linux) quic-go writes one packet per
// call and carries no segment size; the relay forwarder sends frame by frame.

func gsoSize([]byte) int { return 0 }

func setGSOSize([]byte, int) {}

func putGSOCmsg([]byte, int) int { return 0 }
