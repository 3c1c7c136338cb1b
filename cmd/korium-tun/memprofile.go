package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sync"
)

// startMemProfile implements KORIUM_TUN_MEMPROFILE=FILE, a debugging aid
// for scripts/scale.sh next to KORIUM_TUN_CPUPROFILE: at start, on every
// SIGUSR1 (not on Windows) and at exit it writes the heap profile (what is
// in use after a collection) to FILE, the goroutine stacks with their counts
// to FILE.goroutines and the runtime's memory statistics (runtime.MemStats
// as JSON: stacks, heap, runtime overhead) to FILE.memstats. FILE is renamed
// into place last, so a script that removes it, signals, and waits for it
// to reappear reads all three complete. stop ends the signal handler and
// writes the last set. Heap sampling is finer than the default while set.
func startMemProfile(log *slog.Logger) (stop func(), err error) {
	path := os.Getenv("KORIUM_TUN_MEMPROFILE")
	if path == "" {
		return func() {}, nil
	}
	// One sample per 32 KiB allocated instead of 512 KiB: a connection's
	// few-KiB structures show up by their own stacks, at a small cost per
	// allocation (the node allocates little when idle).
	runtime.MemProfileRate = 32 << 10
	if err := writeMemProfile(path); err != nil {
		return nil, fmt.Errorf("KORIUM_TUN_MEMPROFILE: %v", err)
	}
	sig := make(chan os.Signal, 1)
	if len(memProfileSignals) > 0 {
		signal.Notify(sig, memProfileSignals...)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-sig:
				if err := writeMemProfile(path); err != nil {
					log.Warn("KORIUM_TUN_MEMPROFILE: not written", "err", err)
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(sig)
		close(done)
		wg.Wait()
		if err := writeMemProfile(path); err != nil {
			log.Warn("KORIUM_TUN_MEMPROFILE: not written", "err", err)
		}
	}, nil
}

func writeMemProfile(path string) error {
	runtime.GC() // the profile and the statistics then show what is live
	write := func(name string, f func(*os.File) error) error {
		tmp := name + ".tmp"
		out, err := os.Create(tmp)
		if err != nil {
			return err
		}
		if err := f(out); err != nil {
			out.Close()
			os.Remove(tmp)
			return err
		}
		if err := out.Close(); err != nil {
			os.Remove(tmp)
			return err
		}
		return os.Rename(tmp, name)
	}
	if err := write(path+".goroutines", func(f *os.File) error { return pprof.Lookup("goroutine").WriteTo(f, 1) }); err != nil {
		return err
	}
	if err := write(path+".memstats", func(f *os.File) error {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		gogc, limit := gcSettings()
		enc := json.NewEncoder(f)
		enc.SetIndent("", " ")
		return enc.Encode(map[string]uint64{
			"Sys": ms.Sys, "HeapSys": ms.HeapSys, "HeapInuse": ms.HeapInuse, "HeapAlloc": ms.HeapAlloc,
			"HeapIdle": ms.HeapIdle, "HeapReleased": ms.HeapReleased, "HeapObjects": ms.HeapObjects,
			"StackInuse": ms.StackInuse, "StackSys": ms.StackSys, "MSpanInuse": ms.MSpanInuse,
			"MSpanSys": ms.MSpanSys, "MCacheSys": ms.MCacheSys, "BuckHashSys": ms.BuckHashSys,
			"GCSys": ms.GCSys, "OtherSys": ms.OtherSys, "NumGC": uint64(ms.NumGC),
			"Goroutines": uint64(runtime.NumGoroutine()), "GOGC": gogc, "GOMEMLIMIT": limit,
		})
	}); err != nil {
		return err
	}
	return write(path, func(f *os.File) error { return pprof.Lookup("heap").WriteTo(f, 0) })
}
