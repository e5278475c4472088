package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestOtherCPU checks which processes count as other work: one started by someone else
// does, the harness's own children do not. (Totals are left to TestOtherCores: `go test
// ./...` runs other packages' tests beside this one, and they count.)
func TestOtherCPU(t *testing.T) {
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })

	pid := startOutside(t, nil, "sh", "-c", "while :; do :; done")

	before := otherCPU()
	time.Sleep(300 * time.Millisecond)
	after := otherCPU()
	if _, ok := after[child.Process.Pid]; ok {
		t.Errorf("otherCPU counts the harness's child %d", child.Process.Pid)
	}
	if _, ok := after[2]; ok {
		t.Errorf("otherCPU counts kthreadd")
	}
	if after[pid] <= before[pid] {
		t.Errorf("otherCPU: the burner %d outside the harness used %v -> %v CPU-s, want it counted and growing", pid, before[pid], after[pid])
	}
}

func TestOtherCores(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after map[int]float64
		want          Num
	}{
		{"nothing ran", map[int]float64{1: 5, 7: 2}, map[int]float64{1: 5, 7: 2}, 0},
		{"grew", map[int]float64{1: 5, 7: 2}, map[int]float64{1: 5.5, 7: 3}, 0.75},
		{"new process", map[int]float64{1: 5}, map[int]float64{1: 5, 9: 0.4}, 0.2},
		{"ended and reaped", map[int]float64{1: 5, 9: 3}, map[int]float64{1: 8.2}, 0.1},
		{"long job reaped", map[int]float64{1: 5, 9: 600}, map[int]float64{1: 605.1}, 0.05},
		{"started and reaped", map[int]float64{1: 5}, map[int]float64{1: 5.4}, 0.2},
		{"PID reused", map[int]float64{1: 5, 9: 3}, map[int]float64{1: 8.1, 9: 0.2}, 0.15},
		{"not collected", map[int]float64{1: 5, 9: 3}, map[int]float64{1: 5}, 0},
		{"unreadable", nil, map[int]float64{1: 5}, NA},
	} {
		got := otherCores(tc.before, tc.after, 2*time.Second)
		if got.OK() != tc.want.OK() || (got.OK() && (got-tc.want > 1e-9 || tc.want-got > 1e-9)) {
			t.Errorf("%s: otherCores = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestOtherCoresReapedJob is the case that once counted 100 "cores": a process outside
// the harness reaps, during a measurement, a child that used its CPU before it. Only
// what ran during the measurement may count, which is at most every CPU.
func TestOtherCoresReapedJob(t *testing.T) {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	startOutside(t, []string{reaperEnv + "=" + dir}, exe, "-test.run=^TestReaperHelper$")

	waitFile(t, filepath.Join(dir, "zombie"), 30*time.Second)
	before, t0 := otherCPU(), time.Now()
	if err := os.WriteFile(filepath.Join(dir, "reap"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFile(t, filepath.Join(dir, "reaped"), 10*time.Second)
	time.Sleep(200 * time.Millisecond) // clock ticks are 10 ms: not a few ms of interval
	after, d := otherCPU(), time.Since(t0)
	burnt, err := os.ReadFile(filepath.Join(dir, "reaped"))
	if err != nil {
		t.Fatal(err)
	}
	got := otherCores(before, after, d)
	if limit := Num(runtime.NumCPU()) + 0.5; !got.OK() || got > limit {
		t.Fatalf("otherCores = %v over %v while a %s CPU-s job was reaped, want at most %v", got, d, burnt, limit)
	}
}

const reaperEnv = "AMBIT_BENCH_REAPER_DIR"

// TestReaperHelper is TestOtherCoresReapedJob's process outside the harness: it lets a
// child burn about a CPU-second and exit, says so ("zombie"), reaps it when told
// ("reap") and says how much it used ("reaped").
func TestReaperHelper(t *testing.T) {
	dir := os.Getenv(reaperEnv)
	if dir == "" {
		return // run by TestOtherCoresReapedJob only
	}
	child := exec.Command("sh", "-c", `end=$(($(date +%s) + 2)); while [ "$(date +%s)" -lt "$end" ]; do :; done`)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	os.WriteFile(filepath.Join(dir, "zombie"), nil, 0o644)
	for {
		if _, err := os.Stat(filepath.Join(dir, "reap")); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	child.Wait()
	s := child.ProcessState
	os.WriteFile(filepath.Join(dir, "reaped"), []byte(fmt.Sprintf("%.2f", (s.UserTime()+s.SystemTime()).Seconds())), 0o644)
	time.Sleep(time.Minute) // the test kills it; exiting would hand its figures to init
}

// startOutside starts args (with env added) as someone else's process would run: through
// setsid and a shell that exits at once, so init adopts it and it is not the harness's
// descendant. It returns its PID and kills it when tb ends.
func startOutside(tb testing.TB, env []string, args ...string) int {
	tb.Helper()
	cmd := exec.Command("sh", append([]string{"-c", `setsid "$@" >/dev/null 2>&1 & echo $!`, "sh"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("start %v: %v", args, err)
	}
	var pid int
	if _, err := fmt.Sscan(string(out), &pid); err != nil {
		tb.Fatalf("pid of %v: %q: %v", args, out, err)
	}
	tb.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

func waitFile(tb testing.TB, path string, timeout time.Duration) {
	tb.Helper()
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	tb.Fatalf("%s did not appear within %v", path, timeout)
}
