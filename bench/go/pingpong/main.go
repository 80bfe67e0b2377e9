// Park/unpark ping-pong: two goroutines hand a token over unbuffered
// channels (Go's park/unpark path); prints ns per round trip.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"time"
)

func main() {
	procs := flag.Int("procs", 1, "GOMAXPROCS")
	n := flag.Int("n", 1000000, "round trips")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	ping, pong := make(chan struct{}), make(chan struct{})
	go func() {
		for i := 0; i < *n; i++ {
			<-ping
			pong <- struct{}{}
		}
	}()
	start := time.Now()
	for i := 0; i < *n; i++ {
		ping <- struct{}{}
		<-pong
	}
	fmt.Printf("ns_per_op %.1f\n", float64(time.Since(start).Nanoseconds())/float64(*n))
}
