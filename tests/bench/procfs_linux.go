package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on every Linux ABI Go
// supports).
const clockTicks = 100

// procTimes is utime+stime, and cutime+cstime (reaped children), in seconds.
func procTimes(pid int) (self, children float64, ppid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	// The command name may hold spaces and parentheses: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	fs := strings.Fields(string(b[i+1:]))
	// fs[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
	if len(fs) < 15 {
		return 0, 0, 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fs))
	}
	num := func(k int) float64 {
		v, _ := strconv.ParseFloat(fs[k-3], 64)
		return v
	}
	return (num(14) + num(15)) / clockTicks, (num(16) + num(17)) / clockTicks, int(num(4)), nil
}

// cpuSeconds is the CPU time of pid (every thread). With children it adds the CPU of
// reaped children and of the live ones (socat forks one per connection).
func cpuSeconds(pid int, children bool) (float64, error) {
	self, reaped, _, err := procTimes(pid)
	if err != nil {
		return 0, err
	}
	if !children {
		return self, nil
	}
	total := self + reaped
	for _, c := range childPIDs(pid) {
		s, r, _, err := procTimes(c)
		if err == nil {
			total += s + r
		}
	}
	return total, nil
}

// childPIDs lists the live children of pid.
func childPIDs(pid int) []int {
	var out []int
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	for _, t := range ents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// machineBusySeconds is the CPU time all CPUs spent on anything but idling (user,
// system, interrupts, softirq, steal) since boot, from /proc/stat. Its change over a
// measurement covers the benchmark peers and the kernel work a tunnel causes outside
// its own process (the pods' TCP stacks, capture programs, routing).
func machineBusySeconds() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	fs := strings.Fields(string(line))
	if len(fs) < 9 || fs[0] != "cpu" {
		return 0, fmt.Errorf("parse /proc/stat: unexpected first line %q", line)
	}
	var busy float64
	// user nice system idle iowait irq softirq steal: skip idle (4) and iowait (5).
	for i, f := range fs[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		busy += v
	}
	return busy / clockTicks, nil
}

// rssKiB is the resident set of pid (VmRSS).
func rssKiB(pid int) (float64, error) {
	fh, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fs := strings.Fields(v)
			if len(fs) == 0 {
				break
			}
			return strconv.ParseFloat(fs[0], 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// loadavg is /proc/loadavg's three figures.
// otherCPU is the CPU time so far (seconds, with reaped children's) of each process that
// is neither this harness, nor one of its descendants (relays, servers, ztunnels,
// clients), nor a kernel thread (softirq and the like do the paths' own packet work).
// What the others use between two calls competed with the benchmark.
func otherCPU() map[int]float64 {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	type proc struct {
		ppid int
		cpu  float64
	}
	procs := make(map[int]proc, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		self, reaped, ppid, err := procTimes(pid)
		if err == nil {
			procs[pid] = proc{ppid, self + reaped}
		}
	}
	ours := map[int]bool{os.Getpid(): true, 2: true} // kthreadd: parent of every kernel thread
	var mine func(pid, depth int) bool
	mine = func(pid, depth int) bool {
		if v, ok := ours[pid]; ok {
			return v
		}
		p, ok := procs[pid]
		v := ok && pid > 1 && depth < 64 && mine(p.ppid, depth+1)
		ours[pid] = v
		return v
	}
	out := make(map[int]float64)
	for pid, p := range procs {
		if !mine(pid, 0) {
			out[pid] = p.cpu
		}
	}
	return out
}

// otherCores is the average number of CPUs the processes otherCPU counts kept busy over
// d, from its results at the start and the end. A process that ended meanwhile was
// reaped by a parent that otherCPU counts too (a descendant of someone else's process is
// someone else's), whose reaped time then grew by all the child ever used: what the child
// had used at the start is taken off again, or a shell reaping a long build just then
// would count the whole build as competition.
func otherCores(before, after map[int]float64, d time.Duration) Num {
	if before == nil || after == nil || d <= 0 {
		return NA
	}
	var sum float64
	for pid, t := range after {
		if t0, ok := before[pid]; ok && t0 <= t {
			t -= t0 // a lower value is a new process that reuses the PID: count it all
		}
		sum += t
	}
	for pid, t0 := range before {
		if t, ok := after[pid]; !ok || t < t0 {
			sum -= t0 // ended (and reaped): its parent's figure took its whole time
		}
	}
	// A parent that does not collect its children's times (SIGCHLD ignored) took nothing.
	return Num(max(sum, 0) / d.Seconds())
}

func loadavg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	fs := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(fs); i++ {
		l[i], _ = strconv.ParseFloat(fs[i], 64)
	}
	return l
}
