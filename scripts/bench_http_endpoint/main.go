// Benchmark helpers for scripts/bench_http_endpoint.sh, standard library only:
//
//	receiver ADDR          a Firehose HTTP endpoint receiver that answers 200 at once: it reads
//	                       the whole body (gunzipped when sent with Content-Encoding: gzip),
//	                       counts records (occurrences of {"data":), and answers
//	                       {"requestId", "timestamp"}; GET /stats prints "requests records bytes".
//	post URL DIR CLIENTS   the reference client: POSTs every file of DIR (pre-built request
//	                       bodies) with the protocol's headers, CLIENTS at a time, and prints
//	                       "seconds cpu_seconds requests".
package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: receiver ADDR | post URL DIR CLIENTS")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "receiver":
		receiver(os.Args[2])
	case "post":
		clients, err := strconv.Atoi(os.Args[4])
		if err != nil {
			panic(err)
		}
		post(os.Args[2], os.Args[3], clients)
	default:
		os.Exit(2)
	}
}

func receiver(addr string) {
	var requests, records, received atomic.Int64
	marker := []byte(`{"data":`)
	http.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %d %d\n", requests.Load(), records.Load(), received.Load())
	})
	http.HandleFunc("/intake", func(w http.ResponseWriter, r *http.Request) {
		var reader io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			unzipped, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			reader = unzipped
		}
		body, err := io.ReadAll(reader)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		requests.Add(1)
		records.Add(int64(bytes.Count(body, marker)))
		received.Add(int64(len(body)))
		answer, _ := json.Marshal(map[string]any{
			"requestId": r.Header.Get("X-Amz-Firehose-Request-Id"),
			"timestamp": time.Now().UnixMilli(),
		})
		w.Header().Set("Content-Type", "application/json")
		w.Write(answer)
	})
	if err := http.ListenAndServe(addr, nil); err != nil {
		panic(err)
	}
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return float64(usage.Utime.Sec+usage.Stime.Sec) + float64(usage.Utime.Usec+usage.Stime.Usec)/1e6
}

func post(url, dir string, clients int) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		panic(err)
	}
	sort.Strings(files)
	// Bodies are read before the clock starts: the reference only sends.
	bodies := make([][]byte, len(files))
	for i, file := range files {
		if bodies[i], err = os.ReadFile(file); err != nil {
			panic(err)
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	cpuBefore := cpuSeconds()
	start := time.Now()
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(bodies) {
					return
				}
				request, _ := http.NewRequest("POST", url, bytes.NewReader(bodies[i]))
				request.Header.Set("Content-Type", "application/json")
				request.Header.Set("X-Amz-Firehose-Protocol-Version", "1.0")
				request.Header.Set("X-Amz-Firehose-Request-Id", fmt.Sprintf("ref-%d", i))
				request.Header.Set("X-Amz-Firehose-Source-Arn", "arn:aws:firehose:us-east-1:000000000000:deliverystream/bench")
				request.Header.Set("X-Amz-Firehose-Common-Attributes", `{"commonAttributes":{}}`)
				if bytes.HasPrefix(bodies[i], []byte{0x1f, 0x8b}) {
					request.Header.Set("Content-Encoding", "gzip")
				}
				response, err := client.Do(request)
				if err != nil {
					panic(err)
				}
				io.Copy(io.Discard, response.Body)
				response.Body.Close()
				if response.StatusCode != 200 {
					panic(fmt.Sprintf("status %d", response.StatusCode))
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%.3f %.3f %d\n", time.Since(start).Seconds(), cpuSeconds()-cpuBefore, len(bodies))
}
