// W3 parked memory: 100,000 goroutines each blocked receiving on its own
// channel; prints RSS growth per goroutine in bytes.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		panic(err)
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func main() {
	procs := flag.Int("procs", 2, "GOMAXPROCS")
	n := flag.Int("n", 100000, "goroutines")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	chans := make([]chan int, *n)
	for i := range chans {
		chans[i] = make(chan int)
	}
	done := make(chan int, *n)
	before := rssBytes()
	for i := range chans {
		go func(c chan int) { done <- <-c }(chans[i])
	}
	for runtime.NumGoroutine() < *n+1 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond)
	after := rssBytes()
	fmt.Printf("rss_per_task_bytes %.0f\n", float64(after-before)/float64(*n))
	for i := range chans {
		chans[i] <- i
	}
	for range chans {
		<-done
	}
}
