package waypointspire

import (
	"testing"

	spiretest "github.com/ambitmesh/ambit/tests/spire"
)

func TestMain(m *testing.M) { spiretest.TestMain(m) }
