package relay

import (
	"testing"

	"go.uber.org/goleak"
)

// Every pump ends its goroutines: none is left behind when the tests are done.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
