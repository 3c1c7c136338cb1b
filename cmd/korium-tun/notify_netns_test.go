//go:build linux

package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A real `up` in a network namespace tells systemd READY=1 only once its
// TUN exists and its control socket answers, RELOADING=1 and READY=1 around
// a SIGHUP, and STOPPING=1 on SIGTERM; NOTIFY_SOCKET is a unixgram socket
// this test listens on, as systemd's would be.
func TestUpNotifiesSystemd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs up with a kernel TUN in a network namespace")
	}
	ns := fmt.Sprintf("ktn%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "c.yaml"), []byte("log_level: info\n"), 0o644)
	sockPath := filepath.Join(dir, "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	ctl := filepath.Join(dir, "c.sock")
	// 18 bits of proof of work take a moment to generate before the TUN is
	// made: a READY=1 sent too early would be seen without the TUN.
	args := []string{"up", "--config", filepath.Join(dir, "c.yaml"), "--key", filepath.Join(dir, "k"), "--pow-bits", "18",
		"--listen", "127.0.0.1:0", "--tun", "ktn0", "--control", ctl, "--names-file", filepath.Join(dir, "names")}
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KT_RUN_MAIN=1", "KT_ARGS="+strings.Join(args, " "), "NOTIFY_SOCKET="+sockPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()

	next := func(want string) {
		t.Helper()
		buf := make([]byte, 256)
		sock.SetReadDeadline(time.Now().Add(60 * time.Second))
		n, err := sock.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("notify: got %q (%v), want %q; stderr:\n%s", buf[:n], err, want, stderr.String())
		}
	}
	next("READY=1")
	// Ready means ready: the TUN exists and the control socket answers.
	if out, err := exec.Command("ip", "-n", ns, "link", "show", "ktn0").CombinedOutput(); err != nil {
		t.Fatalf("READY=1 before the TUN exists: %v %s", err, out)
	}
	if _, err := run(t, "status", "--control", ctl); err != nil {
		t.Fatalf("READY=1 before the control socket answers: %v", err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	next("RELOADING=1")
	next("READY=1")
	cmd.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("up exited with %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("up did not exit after SIGTERM")
	}
	if !strings.Contains(stderr.String(), "config reloaded") {
		t.Fatalf("no reload logged:\n%s", stderr.String())
	}
	if exec.Command("ip", "-n", ns, "link", "show", "ktn0").Run() == nil {
		t.Fatal("the TUN outlived up")
	}
}
