// W6 yield: two goroutines on one P, N Gosched calls each; prints ns per yield.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

func main() {
	n := flag.Int("n", 5000000, "yields per goroutine")
	flag.Parse()
	runtime.GOMAXPROCS(1)
	var wg sync.WaitGroup
	wg.Add(2)
	start := time.Now()
	for g := 0; g < 2; g++ {
		go func() {
			for i := 0; i < *n; i++ {
				runtime.Gosched()
			}
			wg.Done()
		}()
	}
	wg.Wait()
	fmt.Printf("ns_per_op %.1f\n", float64(time.Since(start).Nanoseconds())/float64(2**n))
}
