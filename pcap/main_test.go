package pcap

import (
	"testing"

	"github.com/ambitmesh/ambit/tests/netns"
)

func TestMain(m *testing.M) {
	netns.EnterPrivate()
	m.Run()
}
