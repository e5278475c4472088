package hbone

import (
	"io"
	"syscall"

	"github.com/ambitmesh/ambit/internal/sockio"
)

// readFromSocket is ReadFrom's path for a socket: readv into record slots, then
// sendSlots. It always handles the transfer (ok is true).
func (s *stream) readFromSocket(rc syscall.RawConn, count func(int64)) (total int64, ok bool, err error) {
	bp, bulk := slotsSmallPool.Get().(*[]byte), false
	defer func() {
		if bulk {
			slotsBulkPool.Put(bp)
		} else {
			slotsSmallPool.Put(bp)
		}
	}()
	sock := sockio.NewRaw(rc)
	var vec [slotsBulk]syscall.Iovec
	for {
		buf := *bp
		slots := len(buf) / slotLen
		for i := range slots {
			d := slotData(buf, i)
			vec[i] = syscall.Iovec{Base: &d[0]}
			vec[i].SetLen(len(d))
		}
		n, err := sock.Readv(vec[:slots])
		if err == io.EOF {
			return total, true, nil
		}
		if err != nil {
			return total, true, err
		}
		if err := s.sendSlots(buf, n); err != nil {
			return total, true, err
		}
		total += int64(n)
		count(int64(n))
		// Like ztunnel's copy buffers: bulk slots once a read fills the small one, back
		// to one slot when reads get small again.
		switch {
		case !bulk && n == slotPayload:
			slotsSmallPool.Put(bp)
			bp, bulk = slotsBulkPool.Get().(*[]byte), true
		case bulk && n < slotPayload:
			slotsBulkPool.Put(bp)
			bp, bulk = slotsSmallPool.Get().(*[]byte), false
		}
	}
}
