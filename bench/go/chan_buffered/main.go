// W5 buffered: capacity 128, 10,000,000 ints from -producers producers to as
// many consumers; prints ns per item.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

func main() {
	procs := flag.Int("procs", 2, "GOMAXPROCS")
	producers := flag.Int("producers", 1, "producers (and consumers)")
	items := flag.Int("n", 10000000, "items in all")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	ch := make(chan int, 128)
	per := *items / *producers
	var wg sync.WaitGroup
	start := time.Now()
	for p := 0; p < *producers; p++ {
		wg.Add(2)
		go func() {
			for i := 0; i < per; i++ {
				ch <- i
			}
			wg.Done()
		}()
		go func() {
			sum := 0
			for i := 0; i < per; i++ {
				sum += <-ch
			}
			_ = sum
			wg.Done()
		}()
	}
	wg.Wait()
	fmt.Printf("ns_per_op %.1f\n", float64(time.Since(start).Nanoseconds())/float64(*items))
}
