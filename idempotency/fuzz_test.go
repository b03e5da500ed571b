package idempotency

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzScanLog feeds the log reader any file: it never panics, accounts
// for every record slot as kept or corrupt, and keeps only records that
// encode back to the very bytes read. Minimizing a kilobyte input is slow;
// cap it:
//
//	go test -run xxx -fuzz FuzzScanLog -fuzztime 1m -fuzzminimizetime 100x ./idempotency
func FuzzScanLog(f *testing.F) {
	dir := f.TempDir()
	c := newClock()
	s, err := Open(Options{Dir: dir, Now: c.Now})
	if err != nil {
		f.Fatal(err)
	}
	for i, k := range []string{"a", "b", "c"} {
		_, p, _ := s.Begin("", "ds", []byte(k), sum(k))
		if err := p.Stored(answer(202, i)); err != nil {
			f.Fatal(err)
		}
		if i != 1 {
			p.Done(Answer{Status: 400, Error: "bad " + k})
		} else {
			p.Forget()
		}
	}
	if err := s.Close(); err != nil {
		f.Fatal(err)
	}
	valid, err := os.ReadFile(filepath.Join(dir, logName))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)-7])
	f.Add(valid[:headerSize])
	f.Add([]byte{})
	f.Add([]byte("TBIK"))
	f.Fuzz(func(t *testing.T, content []byte) {
		kept := 0
		var b [recordSize]byte
		rd := bytes.NewReader(content)
		corrupt, err := scanLog(rd, int64(len(content)), func(r *record) {
			kept++
			end := int(rd.Size()) - rd.Len()
			r.encode(b[:])
			if !bytes.Equal(b[:], content[end-recordSize:end]) {
				t.Fatalf("record at %d decodes to %+v, which encodes to other bytes", end-recordSize, *r)
			}
		})
		if err != nil {
			t.Fatalf("scanLog: %v", err)
		}
		if len(content) < headerSize || !validHeader(content) {
			if kept != 0 {
				t.Fatalf("kept %d records of a log with no valid header", kept)
			}
			return
		}
		slots := (len(content) - headerSize + recordSize - 1) / recordSize
		if kept+corrupt != slots {
			t.Fatalf("kept %d + corrupt %d; want the %d record slots", kept, corrupt, slots)
		}
	})
}
