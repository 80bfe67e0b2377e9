// W8 select: one consumer selects over two channels (capacity 16), each fed
// by its own producer with 1,000,000 items; prints ns per received item.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"time"
)

func main() {
	procs := flag.Int("procs", 2, "GOMAXPROCS")
	per := flag.Int("n", 1000000, "items per producer")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	start := time.Now()
	a, b := make(chan int, 16), make(chan int, 16)
	feed := func(c chan int) {
		for i := 0; i < *per; i++ {
			c <- i
		}
		close(c)
	}
	go feed(a)
	go feed(b)
	n := 0
	for a != nil || b != nil {
		select {
		case _, ok := <-a:
			if !ok {
				a = nil
				continue
			}
			n++
		case _, ok := <-b:
			if !ok {
				b = nil
				continue
			}
			n++
		}
	}
	if n != 2**per {
		panic("lost items")
	}
	fmt.Printf("ns_per_op %.1f\n", float64(time.Since(start).Nanoseconds())/float64(n))
}
