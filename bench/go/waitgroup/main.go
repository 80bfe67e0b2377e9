// WaitGroup fan-out/fan-in: start N goroutines that each call Done, then
// Wait; prints ns per goroutine. The same workload as //sync:wait_group_bench's
// BM_WaitGroup_FanOutFanIn, and measured the same way: Google Benchmark
// reports warm iterations, so the first (cold) round here is a warm-up whose
// time is printed separately, and ns_per_op is the mean of the next -rounds.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

func round(n int) time.Duration {
	var wg sync.WaitGroup
	start := time.Now()
	wg.Add(n)
	for i := 0; i < n; i++ {
		go func() { wg.Done() }()
	}
	wg.Wait()
	return time.Since(start)
}

func main() {
	procs := flag.Int("procs", 2, "GOMAXPROCS")
	n := flag.Int("n", 100000, "goroutines")
	rounds := flag.Int("rounds", 5, "measured rounds after one warm-up round")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	cold := round(*n)
	var total time.Duration
	for r := 0; r < *rounds; r++ {
		total += round(*n)
	}
	fmt.Printf("cold_ns_per_op %.1f\n", float64(cold.Nanoseconds())/float64(*n))
	fmt.Printf("ns_per_op %.1f\n", float64(total.Nanoseconds())/float64(*n**rounds))
}
