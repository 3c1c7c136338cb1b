package overlay

import "syscall"

const syscallEADDRINUSE = syscall.EADDRINUSE
