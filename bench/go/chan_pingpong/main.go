// W4 ping-pong over unbuffered channels carrying ints (the same program as
// //chan:chan_bench's BM_Chan_PingPong); prints ns per round trip.
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
	ping, pong := make(chan int), make(chan int)
	done := make(chan struct{})
	start := time.Now()
	go func() {
		for i := 0; i < *n; i++ {
			pong <- <-ping
		}
		close(done)
	}()
	for i := 0; i < *n; i++ {
		ping <- i
		<-pong
	}
	<-done
	fmt.Printf("ns_per_op %.1f\n", float64(time.Since(start).Nanoseconds())/float64(*n))
}
