//go:build !linux

package istiotraffic

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	fakeClientsListThenWatch()
	os.Exit(m.Run())
}
