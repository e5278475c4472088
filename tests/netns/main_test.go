package netns

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	EnterPrivate()
	goleak.VerifyTestMain(m)
	os.Exit(0) // unreachable: VerifyTestMain exits
}
