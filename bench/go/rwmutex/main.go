// Read-mostly RWMutex: 8 goroutines each do 1,000,000 operations on a small
// shared state, 90% under RLock (read two fields), 10% under Lock (update
// both); prints ns per operation (start and join included).
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
)

func main() {
	procs := flag.Int("procs", 2, "GOMAXPROCS")
	g := flag.Int("g", 8, "goroutines")
	n := flag.Int("n", 1000000, "operations per goroutine")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	var mu sync.RWMutex
	var wg sync.WaitGroup
	var a, b int64
	sums := make([]int64, *g)
	start := time.Now()
	wg.Add(*g)
	for t := 0; t < *g; t++ {
		go func(t int) {
			var sum int64
			for i := 0; i < *n; i++ {
				if i%10 == 0 {
					mu.Lock()
					a++
					b++
					mu.Unlock()
				} else {
					mu.RLock()
					sum += a - b
					mu.RUnlock()
				}
			}
			sums[t] = sum
			wg.Done()
		}(t)
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, s := range sums {
		if s != 0 {
			fmt.Fprintln(os.Stderr, "torn read")
			os.Exit(1)
		}
	}
	fmt.Printf("ns_per_op %.1f\n", float64(elapsed.Nanoseconds())/float64(*g**n))
}
