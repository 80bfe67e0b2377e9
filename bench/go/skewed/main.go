// Skewed load: 100,000 CPU-bound tasks all started by one goroutine; prints
// ns per task (wall time / tasks). Same work per task as sched_bench's.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

//go:noinline
func work(seed uint64) uint64 {
	x := seed
	for i := 0; i < 2000; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	return x
}

func main() {
	procs := flag.Int("procs", 1, "GOMAXPROCS")
	n := flag.Int("n", 100000, "tasks")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	var sink uint64
	var wg sync.WaitGroup
	start := time.Now()
	wg.Add(*n)
	for i := 0; i < *n; i++ {
		go func(i int) {
			atomic.AddUint64(&sink, work(uint64(i)))
			wg.Done()
		}(i)
	}
	wg.Wait()
	fmt.Printf("ns_per_op %.1f\n", float64(time.Since(start).Nanoseconds())/float64(*n))
	_ = sink
}
