package datapath

import "syscall"

// goneErrnos are the device errors after which it never works again: the
// TUN's interface was deleted (EBADFD from its fd), or it has no device.
var goneErrnos = []error{syscall.EBADFD, syscall.ENODEV, syscall.ENXIO}
