// W7 mutex: 8 goroutines each increment one shared counter 1,000,000 times
// under one sync.Mutex; prints ns per increment (start and join included).
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
	n := flag.Int("n", 1000000, "increments per goroutine")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	var mu sync.Mutex
	var wg sync.WaitGroup
	counter := 0
	start := time.Now()
	wg.Add(*g)
	for i := 0; i < *g; i++ {
		go func() {
			for j := 0; j < *n; j++ {
				mu.Lock()
				counter++
				mu.Unlock()
			}
			wg.Done()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if counter != *g**n {
		fmt.Fprintln(os.Stderr, "lost increments")
		os.Exit(1)
	}
	fmt.Printf("ns_per_op %.1f\n", float64(elapsed.Nanoseconds())/float64(*g**n))
}
