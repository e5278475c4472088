package main

import (
	"fmt"
	"os/exec"
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

	// setsid and a shell that exits at once: init adopts the burner, so it is no longer
	// the harness's descendant, as a process someone else started would not be.
	out, err := exec.Command("sh", "-c", "setsid sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(out), &pid); err != nil {
		t.Fatalf("burner pid %q: %v", out, err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })

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
		{"gone", map[int]float64{1: 5, 9: 3}, map[int]float64{1: 5.2}, 0.1},
		{"PID reused", map[int]float64{9: 3}, map[int]float64{9: 0.2}, 0.1},
		{"unreadable", nil, map[int]float64{1: 5}, NA},
	} {
		got := otherCores(tc.before, tc.after, 2*time.Second)
		if got.OK() != tc.want.OK() || (got.OK() && (got-tc.want > 1e-9 || tc.want-got > 1e-9)) {
			t.Errorf("%s: otherCores = %v, want %v", tc.name, got, tc.want)
		}
	}
}
