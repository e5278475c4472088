// Package background runs a component's Run loop for the length of a test.
package background

import (
	"context"
	"testing"
)

// Run calls run in a goroutine with a context that tb's cleanup cancels; the cleanup
// then waits for run to return and fails the test if it returned an error. Cleanups
// registered before Run therefore run after run has returned.
func Run(tb testing.TB, run func(context.Context) error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	})
}
