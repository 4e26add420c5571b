// loadgen: a small, cheap gRPC load generator for the tuf-signer benchmarks.
//
// It sends pre-serialised request bodies (written by bench/_gen.py) with a
// pass-through codec, so the generator never builds or parses protobuf on the
// hot path and every request can be distinct (h2load sends one body only, and
// an identical Sign is answered as a cheap idempotent replay). It is built at
// bench time with Debian's Go toolchain and grpc-go (golang-google-grpc-dev);
// nothing third-party is vendored.
//
// Usage: loadgen SPEC.json   (results as JSON on stdout)
//
// Body file: records of [u8 method index][u32 little-endian length][body].
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"math"
	"os"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	p := v.(*[]byte)
	*p = append((*p)[:0], data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

type tlsSpec struct {
	CA         string `json:"ca"`
	Cert       string `json:"cert"`
	Key        string `json:"key"`
	ServerName string `json:"server_name"`
}

type phaseSpec struct {
	Name        string   `json:"name"`
	File        string   `json:"file"`
	Methods     []string `json:"methods"`
	Concurrency int      `json:"concurrency"`
	Rate        float64  `json:"rate"`     // requests/s, open loop; 0 = closed loop
	Duration    float64  `json:"duration"` // seconds; 0 = until the file is used up
	Warmup      int      `json:"warmup"`   // records sent first and not measured
	Batch       bool     `json:"batch"`    // responses are SignBatchResponse: count items
	Timeout     float64  `json:"timeout"`  // seconds per call
	Timeline    bool     `json:"timeline"` // report every completion: [seconds after start, items]
}

type spec struct {
	Target string      `json:"target"`
	TLS    *tlsSpec    `json:"tls"`
	Conns  int         `json:"conns"`
	Phases []phaseSpec `json:"phases"`
}

type record struct {
	method int
	body   []byte
}

type latStats struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type phaseResult struct {
	Name       string         `json:"name"`
	Sent       int64          `json:"sent"`
	OK         int64          `json:"ok"`
	Errors     int64          `json:"errors"`
	Codes      map[string]int `json:"codes"`
	Samples    []string       `json:"samples"`
	Items      int64          `json:"items"`
	ItemErrors int64          `json:"item_errors"`
	ElapsedS   float64        `json:"elapsed_s"`
	Rate       float64        `json:"rate"`
	ItemsRate  float64        `json:"items_rate"`
	LatencyUS  latStats       `json:"latency_us"`
	Late       int64          `json:"late"`
	Exhausted  bool           `json:"exhausted"`
	StartUnix  float64        `json:"start_unix"`
	EndUnix    float64        `json:"end_unix"`
	// Warm-up calls are not measured, but their failures are counted: a run
	// whose warm-up failed is not a clean run.
	WarmupErrors     int64        `json:"warmup_errors"`
	WarmupItemErrors int64        `json:"warmup_item_errors"`
	WarmupSamples    []string     `json:"warmup_samples"`
	Timeline         [][2]float64 `json:"timeline,omitempty"`
}

type output struct {
	Phases   []phaseResult `json:"phases"`
	CPUUserS float64       `json:"cpu_user_s"`
	CPUSysS  float64       `json:"cpu_sys_s"`
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(2)
}

func readRecords(path string, nMethods int) []record {
	data, err := ioutil.ReadFile(path)
	if err != nil {
		die("%v", err)
	}
	var out []record
	for off := 0; off < len(data); {
		if off+5 > len(data) {
			die("%s: truncated record header at %d", path, off)
		}
		m := int(data[off])
		n := int(binary.LittleEndian.Uint32(data[off+1 : off+5]))
		off += 5
		if off+n > len(data) || m >= nMethods {
			die("%s: bad record at %d", path, off)
		}
		out = append(out, record{m, data[off : off+n]})
		off += n
	}
	return out
}

func dial(s *spec) []*grpc.ClientConn {
	opts := []grpc.DialOption{
		grpc.WithDefaultCallOptions(
			grpc.ForceCodec(rawCodec{}),
			grpc.MaxCallRecvMsgSize(256<<20),
			grpc.MaxCallSendMsgSize(256<<20),
		),
		grpc.WithInitialWindowSize(1 << 24),
		grpc.WithInitialConnWindowSize(1 << 24),
		grpc.WithWriteBufferSize(1 << 20),
		grpc.WithReadBufferSize(1 << 20),
		grpc.WithBlock(),
	}
	if s.TLS != nil {
		pool := x509.NewCertPool()
		ca, err := ioutil.ReadFile(s.TLS.CA)
		if err != nil || !pool.AppendCertsFromPEM(ca) {
			die("cannot read CA %s", s.TLS.CA)
		}
		cfg := &tls.Config{RootCAs: pool, ServerName: s.TLS.ServerName}
		if s.TLS.Cert != "" {
			pair, err := tls.LoadX509KeyPair(s.TLS.Cert, s.TLS.Key)
			if err != nil {
				die("client certificate: %v", err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		opts = append(opts, grpc.WithInsecure())
	}
	conns := make([]*grpc.ClientConn, s.Conns)
	for i := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := grpc.DialContext(ctx, s.Target, opts...)
		cancel()
		if err != nil {
			die("dial %s: %v", s.Target, err)
		}
		conns[i] = c
	}
	return conns
}

// batchCounts reads a SignBatchResponse: field 1 (repeated SignBatchResult),
// whose field 2 is the item's status code. Returns (items, failed items, a reason).
func batchCounts(b []byte) (int64, int64, string) {
	var items, failed int64
	reason := ""
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return items, failed + 1, "unparsable response"
		}
		b = b[n:]
		field, wt := key>>3, key&7
		switch wt {
		case 0:
			_, n = binary.Uvarint(b)
			b = b[n:]
		case 2:
			l, n := binary.Uvarint(b)
			b = b[n:]
			inner := b[:l]
			b = b[l:]
			if field == 1 {
				items++
				code, why := itemCode(inner)
				if code != 0 {
					failed++
					if reason == "" {
						reason = fmt.Sprintf("item code %d: %s", code, why)
					}
				}
			}
		default:
			return items, failed + 1, "unexpected wire type"
		}
	}
	return items, failed, reason
}

func itemCode(b []byte) (uint64, string) {
	var code uint64
	why := ""
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return 99, "unparsable item"
		}
		b = b[n:]
		field, wt := key>>3, key&7
		switch wt {
		case 0:
			v, n := binary.Uvarint(b)
			b = b[n:]
			if field == 2 {
				code = v
			}
		case 2:
			l, n := binary.Uvarint(b)
			b = b[n:]
			if field == 4 {
				why = string(b[:l])
			}
			b = b[l:]
		default:
			return 99, "unexpected wire type"
		}
	}
	return code, why
}

type collector struct {
	mu         sync.Mutex
	lat        []float64
	ok, errs   int64
	items      int64
	itemErrors int64
	codes      map[string]int
	samples    []string
	last       time.Time
	// With a timeline: each completion's time after start (s) and items signed.
	start    time.Time
	timeline [][2]float64
	keep     bool
}

func (c *collector) add(d time.Duration, err error, resp []byte, batch bool, end time.Time) {
	var items, failed int64
	reason := ""
	if err == nil && batch {
		items, failed, reason = batchCounts(resp)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if end.After(c.last) {
		c.last = end
	}
	c.lat = append(c.lat, float64(d.Nanoseconds())/1000.0)
	if err != nil {
		c.errs++
		st, _ := status.FromError(err)
		c.codes[st.Code().String()]++
		if len(c.samples) < 5 {
			c.samples = append(c.samples, st.Code().String()+": "+st.Message())
		}
		return
	}
	c.ok++
	c.items += items
	c.itemErrors += failed
	if c.keep {
		done := items - failed
		if !batch {
			done = 1
		}
		c.timeline = append(c.timeline, [2]float64{end.Sub(c.start).Seconds(), float64(done)})
	}
	if reason != "" && len(c.samples) < 5 {
		c.samples = append(c.samples, reason)
	}
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return sorted[i]
}

func call(ctx context.Context, conn *grpc.ClientConn, method string, body []byte) ([]byte, error) {
	in := body
	var out []byte
	err := conn.Invoke(ctx, method, &in, &out)
	return out, err
}

func runPhase(conns []*grpc.ClientConn, p phaseSpec) phaseResult {
	recs := readRecords(p.File, len(p.Methods))
	if p.Concurrency < 1 {
		p.Concurrency = 1
	}
	timeout := time.Duration(p.Timeout * float64(time.Second))
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	// One deadline for the whole phase (a timer per call would cost more than the
	// call's own bookkeeping): the phase's duration plus the per-call timeout.
	ctx, cancel := context.WithTimeout(context.Background(),
		time.Duration(p.Duration*float64(time.Second))+timeout)
	defer cancel()
	// Warm-up: the first records, same concurrency, not measured.
	warm := p.Warmup
	if warm > len(recs) {
		warm = len(recs)
	}
	var wg sync.WaitGroup
	var wnext int64
	wcol := &collector{codes: map[string]int{}}
	for g := 0; g < p.Concurrency; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&wnext, 1) - 1
				if i >= int64(warm) {
					return
				}
				r := recs[i]
				t0 := time.Now()
				out, err := call(ctx, conns[g%len(conns)], p.Methods[r.method], r.body)
				t1 := time.Now()
				wcol.add(t1.Sub(t0), err, out, p.Batch, t1)
			}
		}(g)
	}
	wg.Wait()
	recs = recs[warm:]

	start := time.Now()
	col := &collector{codes: map[string]int{}, start: start, keep: p.Timeline}
	var deadline time.Time
	if p.Duration > 0 {
		deadline = start.Add(time.Duration(p.Duration * float64(time.Second)))
	}
	var sent, late int64
	exhausted := false
	if p.Rate <= 0 {
		var next int64
		for g := 0; g < p.Concurrency; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				conn := conns[g%len(conns)]
				for {
					if !deadline.IsZero() && time.Now().After(deadline) {
						return
					}
					i := atomic.AddInt64(&next, 1) - 1
					if i >= int64(len(recs)) {
						return
					}
					atomic.AddInt64(&sent, 1)
					r := recs[i]
					t0 := time.Now()
					out, err := call(ctx, conn, p.Methods[r.method], r.body)
					t1 := time.Now()
					col.add(t1.Sub(t0), err, out, p.Batch, t1)
				}
			}(g)
		}
		wg.Wait()
		exhausted = next >= int64(len(recs)) && (deadline.IsZero() || col.last.Before(deadline))
	} else {
		sem := make(chan struct{}, p.Concurrency)
		interval := float64(time.Second) / p.Rate
		for i := range recs {
			due := start.Add(time.Duration(float64(i) * interval))
			if !deadline.IsZero() && due.After(deadline) {
				break
			}
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			select {
			case sem <- struct{}{}:
			default:
				late++
				sem <- struct{}{}
			}
			sent++
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				defer func() { <-sem }()
				r := recs[i]
				t0 := time.Now()
				out, err := call(ctx, conns[i%len(conns)], p.Methods[r.method], r.body)
				t1 := time.Now()
				col.add(t1.Sub(t0), err, out, p.Batch, t1)
			}(i)
			if i == len(recs)-1 {
				exhausted = true
			}
		}
		wg.Wait()
	}
	end := col.last
	if end.IsZero() {
		end = time.Now()
	}
	elapsed := end.Sub(start).Seconds()
	sort.Float64s(col.lat)
	mean := 0.0
	for _, v := range col.lat {
		mean += v
	}
	if len(col.lat) > 0 {
		mean /= float64(len(col.lat))
	}
	res := phaseResult{
		Name: p.Name, Sent: sent, OK: col.ok, Errors: col.errs, Codes: col.codes,
		Samples: col.samples, Items: col.items, ItemErrors: col.itemErrors,
		ElapsedS: elapsed, Late: late, Exhausted: exhausted,
		StartUnix: float64(start.UnixNano()) / 1e9, EndUnix: float64(end.UnixNano()) / 1e9,
		LatencyUS: latStats{
			P50: percentile(col.lat, 50), P90: percentile(col.lat, 90),
			P99: percentile(col.lat, 99), Max: percentile(col.lat, 100), Mean: mean,
		},
	}
	if res.Samples == nil {
		res.Samples = []string{}
	}
	res.WarmupErrors, res.WarmupItemErrors = wcol.errs, wcol.itemErrors
	res.WarmupSamples = wcol.samples
	if res.WarmupSamples == nil {
		res.WarmupSamples = []string{}
	}
	if p.Timeline {
		sort.Slice(col.timeline, func(a, b int) bool { return col.timeline[a][0] < col.timeline[b][0] })
		res.Timeline = col.timeline
	}
	if elapsed > 0 {
		res.Rate = float64(col.ok) / elapsed
		res.ItemsRate = float64(col.items) / elapsed
	}
	return res
}

func main() {
	if len(os.Args) != 2 {
		die("usage: loadgen SPEC.json")
	}
	raw, err := ioutil.ReadFile(os.Args[1])
	if err != nil {
		die("%v", err)
	}
	var s spec
	if err := json.Unmarshal(raw, &s); err != nil {
		die("spec: %v", err)
	}
	if s.Conns < 1 {
		s.Conns = 1
	}
	// Memory is plentiful and the bodies are read once: collect garbage less often.
	debug.SetGCPercent(400)
	conns := dial(&s)
	out := output{}
	for _, p := range s.Phases {
		out.Phases = append(out.Phases, runPhase(conns, p))
	}
	for _, c := range conns {
		c.Close()
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	out.CPUUserS = float64(ru.Utime.Sec) + float64(ru.Utime.Usec)/1e6
	out.CPUSysS = float64(ru.Stime.Sec) + float64(ru.Stime.Usec)/1e6
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	enc.Encode(out)
}
