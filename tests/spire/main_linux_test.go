package spiretest_test

import (
	"os"
	"testing"

	spiretest "github.com/ambitmesh/ambit/tests/spire"
)

func TestMain(m *testing.M) { spiretest.TestMain(m) }

func testingNotRoot() bool { return os.Geteuid() != 0 }
