package main

import (
	"slices"
	"testing"
)

// Every repetition runs every path once; over the three repetitions of a full run no path
// always comes first, and at most one always follows the same path (with a rotation
// alone every path did; three forward or backward orders cannot do better).
func TestRunOrder(t *testing.T) {
	for _, n := range []int{2, 3, 6, 7} {
		firsts := map[int]bool{}
		before := make([]map[int]bool, n) // path -> the paths that ran right before it
		for i := range before {
			before[i] = map[int]bool{}
		}
		for rep := range 3 {
			order := runOrder(n, rep)
			sorted := slices.Sorted(slices.Values(order))
			for i, v := range sorted {
				if v != i {
					t.Fatalf("n=%d rep %d: order %v is not a permutation", n, rep, order)
				}
			}
			firsts[order[0]] = true
			for i := 1; i < n; i++ {
				before[order[i]][order[i-1]] = true
			}
		}
		if len(firsts) < 2 {
			t.Errorf("n=%d: the same path runs first in every repetition", n)
		}
		same := 0
		for _, b := range before {
			if len(b) == 1 {
				same++
			}
		}
		if n > 2 && same > 1 {
			t.Errorf("n=%d: %d paths always follow the same path", n, same)
		}
	}
}
