// W2 sleepers: N goroutines each sleep 100 ms then signal; prints wall time
// in ms and peak RSS in MB.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"time"
)

func main() {
	procs := flag.Int("procs", 2, "GOMAXPROCS")
	n := flag.Int("n", 1000000, "goroutines")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	var wg sync.WaitGroup
	start := time.Now()
	wg.Add(*n)
	for i := 0; i < *n; i++ {
		go func() {
			time.Sleep(100 * time.Millisecond)
			wg.Done()
		}()
	}
	wg.Wait()
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Printf("wall_ms %.1f peak_rss_mb %.1f\n",
		float64(time.Since(start).Microseconds())/1000, float64(ru.Maxrss)/1024)
}
