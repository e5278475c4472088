package redirect_test

import (
	"os"
	"testing"

	"github.com/ambitmesh/ambit/tests/netns"
	"go.uber.org/goleak"
)

// Privileged tests run in a private network namespace of their own (see netns.EnterPrivate).
func TestMain(m *testing.M) {
	netns.EnterPrivate()
	goleak.VerifyTestMain(m)
	os.Exit(0) // unreachable: VerifyTestMain exits
}
