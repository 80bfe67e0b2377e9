// W1 spawn: N goroutines that only signal a WaitGroup; prints ns per goroutine.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

func main() {
	procs := flag.Int("procs", 1, "GOMAXPROCS")
	n := flag.Int("n", 1000000, "goroutines")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	var wg sync.WaitGroup
	start := time.Now()
	wg.Add(*n)
	for i := 0; i < *n; i++ {
		go func() { wg.Done() }()
	}
	wg.Wait()
	fmt.Printf("ns_per_op %.1f\n", float64(time.Since(start).Nanoseconds())/float64(*n))
}
