package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// settle lets a relay reap the children of closed connections before CPU is read again.
const settle = 200 * time.Millisecond

// iperfResult is the part of iperf3 -J this harness reads.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Seconds       float64 `json:"seconds"`
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// iperf runs iperf3 with n parallel streams from the client pod through p.
func (b *bench) iperf(ctx context.Context, p *benchPath, n int) Run {
	secs := int(b.cfg.Stream.Round(time.Second) / time.Second)
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Stream+30*time.Second)
	defer cancel()
	cmd := p.client.Command(ctx, b.tools.iperf3, "-c", p.iperf.Addr().String(), "-p", fmt.Sprint(p.iperf.Port()),
		"-t", fmt.Sprint(secs), "-P", fmt.Sprint(n), "-J", "--connect-timeout", "5000")
	before, t0 := p.cpu(), time.Now()
	mBefore, merr := machineBusySeconds()
	out, err := cmd.Output()
	mAfter, merr2 := machineBusySeconds()
	time.Sleep(settle)
	r := Run{CPU: cpuDelta(before, p.cpu()), Seconds: Num(time.Since(t0).Seconds()), MachineCPU: NA}
	if merr == nil && merr2 == nil {
		r.MachineCPU = Num(mAfter - mBefore)
	}
	var res iperfResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		r.Error = fmt.Sprintf("iperf3: %v; %v: %s", err, jerr, firstLines(out))
		return r
	}
	if res.Error != "" || err != nil {
		r.Error = fmt.Sprintf("iperf3: %v %s", err, res.Error)
		return r
	}
	s := res.End.SumReceived
	r.Bytes, r.Gbps = Num(s.Bytes), Num(s.BitsPerSecond/1e9)
	return r
}

// fortioResult is the part of fortio's JSON this harness reads.
type fortioResult struct {
	ActualQPS         float64
	ActualDuration    float64 // ns
	RetCodes          map[string]int
	DurationHistogram struct {
		Count       int
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

// fortio runs a fortio TCP echo load of qps requests per second over c connections.
func (b *bench) fortio(ctx context.Context, p *benchPath, qps, c int, d time.Duration) Run {
	file := filepath.Join(b.dir, fmt.Sprintf("fortio-%s-%d.json", p.name, qps))
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := p.client.Command(ctx, b.tools.fortio, "load", "-quiet", "-loglevel", "Error",
		"-qps", fmt.Sprint(qps), "-c", fmt.Sprint(c), "-t", d.String(), "-payload-size", fmt.Sprint(payloadBytes),
		// 10 µs histogram buckets: the default 1 ms would hide what a tunnel adds.
		"-r", "0.00001", "-p", "50,90,99,99.9", "-json", file,
		"tcp://"+p.echo.String())
	before, t0 := p.cpu(), time.Now()
	out, err := cmd.CombinedOutput()
	time.Sleep(settle)
	wall := time.Since(t0) - settle
	r := Run{CPU: cpuDelta(before, p.cpu()), Seconds: Num(wall.Seconds())}
	return fortioResults(r, out, err, file, "OK")
}

// fortioResults fills r from a fortio run: its error and output, and the JSON result
// in file, in which every request must have returned ok ("OK" for tcp://, "200" for
// HTTP).
func fortioResults(r Run, out []byte, err error, file, ok string) Run {
	if err != nil {
		r.Error = fmt.Sprintf("fortio: %v: %s", err, firstLines(out))
		return r
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		r.Error = fmt.Sprintf("fortio result: %v", err)
		return r
	}
	var res fortioResult
	if err := json.Unmarshal(raw, &res); err != nil {
		r.Error = fmt.Sprintf("fortio result: %v", err)
		return r
	}
	if n := res.RetCodes[ok]; n == 0 || n < res.DurationHistogram.Count {
		r.Error = fmt.Sprintf("fortio: %d of %d requests %s (%v)", n, res.DurationHistogram.Count, ok, res.RetCodes)
		return r
	}
	r.QPS, r.Requests = Num(res.ActualQPS), Num(res.DurationHistogram.Count)
	res.percentiles(&r)
	return r
}

// percentiles puts the result's latency percentiles (-p 50,90,99,99.9) in r, in ms.
func (res *fortioResult) percentiles(r *Run) {
	for _, pc := range res.DurationHistogram.Percentiles {
		ms := Num(pc.Value * 1000)
		switch pc.Percentile {
		case 50:
			r.P50 = ms
		case 90:
			r.P90 = ms
		case 99:
			r.P99 = ms
		case 99.9:
			r.P999 = ms
		}
	}
}

// connRate opens, echoes one byte on, and closes connections in a loop from the client
// pod for the configured time: new connections per second through the path.
func (b *bench) connRate(ctx context.Context, p *benchPath) Run {
	var n, errs int
	var lastErr error
	before, t0 := p.cpu(), time.Now()
	err := p.client.Do(func() error {
		deadline := t0.Add(b.cfg.Conn)
		buf := []byte{'x'}
		d := net.Dialer{Timeout: 2 * time.Second}
		for time.Now().Before(deadline) && ctx.Err() == nil {
			err := func() error {
				c, err := d.DialContext(ctx, "tcp", p.echo.String())
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Write(buf); err != nil {
					return err
				}
				_, err = io.ReadFull(c, buf)
				return err
			}()
			if err != nil {
				errs++
				lastErr = err
				if errs > 100 && errs > n {
					return fmt.Errorf("%d errors in %d connections, last: %w", errs, n+errs, err)
				}
				continue
			}
			n++
		}
		return nil
	})
	wall := time.Since(t0)
	time.Sleep(settle)
	r := Run{CPU: cpuDelta(before, p.cpu()), Seconds: Num(wall.Seconds()), Conns: n, ConnErrors: errs}
	r.ConnPerSec = Num(float64(n) / wall.Seconds())
	switch {
	case err != nil:
		r.Error = err.Error()
	case n == 0:
		r.Error = fmt.Sprintf("no connection completed: %v", lastErr)
	}
	return r
}

// idle holds N established (echo-checked) connections through p and reads the resident
// memory of both tunnel ends at rest and with them open.
func (b *bench) idle(ctx context.Context, p *benchPath) Run {
	r := Run{RSSRestKiB: [2]Num{NA, NA}, RSSIdleKiB: [2]Num{NA, NA}, CPU: [2]Num{NA, NA}}
	rss := func() [2]Num {
		out := [2]Num{NA, NA}
		for e, end := range p.ends {
			if v, err := rssKiB(end.echoPID); err == nil {
				out[e] = Num(v)
			}
		}
		return out
	}
	r.RSSRestKiB = rss()
	conns := make([]net.Conn, 0, b.cfg.IdleConns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		// Let both ends notice the closes before the next path runs.
		time.Sleep(time.Second)
	}()
	t0 := time.Now()
	err := p.client.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		buf := []byte{'x'}
		for len(conns) < b.cfg.IdleConns {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c, err := d.DialContext(ctx, "tcp", p.echo.String())
			if err != nil {
				return fmt.Errorf("connection %d: %w", len(conns)+1, err)
			}
			conns = append(conns, c)
			// One byte there and back: the connection is established end to end, not
			// just accepted by the first relay.
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(buf); err != nil {
				return fmt.Errorf("connection %d: %w", len(conns), err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				return fmt.Errorf("connection %d: echo: %w", len(conns), err)
			}
			c.SetDeadline(time.Time{})
		}
		return nil
	})
	r.Seconds = Num(time.Since(t0).Seconds())
	r.Conns = len(conns)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	time.Sleep(time.Second)
	r.RSSIdleKiB = rss()
	return r
}

// firstLines shortens a tool's output for an error message.
func firstLines(b []byte) string {
	s := strings.TrimSpace(string(b))
	if lines := strings.SplitN(s, "\n", 4); len(lines) > 3 {
		s = strings.Join(lines[:3], " | ") + " ..."
	}
	return strings.ReplaceAll(s, "\n", " | ")
}
