package spool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tbproxy/tbproxy/buffer"
)

func lines(ss ...string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

// segmentOf builds a segment with n data records and returns it and each
// record's offset.
func segmentOf(n int) ([]byte, []int) {
	b := append([]byte(nil), header[:]...)
	var offs []int
	for i := range n {
		offs = append(offs, len(b))
		b = appendData(b, buffer.Key{Token: "tok", Datasource: fmt.Sprintf("ds%d", i%2)},
			lines(fmt.Sprintf(`{"i":%d,"s":"Zürich"}`, i), `{"second":true}`))
	}
	return b, offs
}

func TestScanRoundTrip(t *testing.T) {
	b, offs := segmentOf(3)
	b = appendDone(b, []ref{{seq: 7, offset: int64(offs[1])}, {seq: 3, offset: 99}})
	sc, err := scan(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(sc.records) != 3 || sc.corrupt != 0 || sc.validEnd != int64(len(b)) {
		t.Fatalf("got %d records, %d corrupt, end %d; want 3, 0, %d", len(sc.records), sc.corrupt, sc.validEnd, len(b))
	}
	if len(sc.done) != 2 || sc.done[0] != (ref{seq: 7, offset: int64(offs[1])}) || sc.done[1] != (ref{seq: 3, offset: 99}) {
		t.Errorf("done refs: got %v", sc.done)
	}
	r := sc.records[2]
	if r.key != (buffer.Key{Token: "tok", Datasource: "ds0"}) || r.rows != 2 || string(r.data) != "{\"i\":2,\"s\":\"Zürich\"}\n{\"second\":true}\n" || r.offset != int64(offs[2]) {
		t.Errorf("record: got %+v (data %q)", r, r.data)
	}
}

func TestScanTornTail(t *testing.T) {
	b, offs := segmentOf(3)
	for cut := offs[2] + 1; cut < len(b); cut += 7 {
		sc, err := scan(b[:cut])
		if err != nil {
			t.Fatal(err)
		}
		if len(sc.records) != 2 || sc.validEnd != int64(offs[2]) || sc.corrupt != 1 {
			t.Fatalf("cut at %d: got %d records, end %d, %d corrupt; want 2, %d, 1", cut, len(sc.records), sc.validEnd, sc.corrupt, offs[2])
		}
	}
}

func TestScanFlippedByteMidFile(t *testing.T) {
	b, offs := segmentOf(3)
	for _, at := range []int{offs[1] + 2, offs[1] + 6, offs[1] + 10, offs[1] + 20} { // magic, length, CRC, payload
		c := bytes.Clone(b)
		c[at] ^= 0x40
		sc, err := scan(c)
		if err != nil {
			t.Fatal(err)
		}
		if len(sc.records) != 2 || sc.records[1].offset != int64(offs[2]) || sc.corrupt != 1 || sc.validEnd != int64(len(c)) {
			t.Errorf("flip at %d: got %d records, %d corrupt, end %d; want the 1st and 3rd, 1 corrupt, the whole file", at, len(sc.records), sc.corrupt, sc.validEnd)
		}
	}
}

func TestScanEmptyAndForeignFiles(t *testing.T) {
	if sc, err := scan(header[:]); err != nil || len(sc.records) != 0 || sc.validEnd != headerLen {
		t.Errorf("header only: got %+v, %v", sc, err)
	}
	if _, err := scan(nil); !errors.Is(err, errNotSegment) {
		t.Errorf("empty file: got %v; want errNotSegment", err)
	}
	v2 := append([]byte("TBSPOOL"), 2)
	if _, err := scan(v2); !errors.Is(err, errUnknownVersion) {
		t.Errorf("version 2: got %v; want errUnknownVersion", err)
	}
}

func FuzzScan(f *testing.F) {
	b, offs := segmentOf(4)
	f.Add(b)
	f.Add(b[:offs[2]+5])
	f.Add(header[:])
	f.Add([]byte("TBSPOOL\x02"))
	if seeds, _ := filepath.Glob("testdata/*.spool"); len(seeds) > 0 {
		for _, s := range seeds {
			if d, err := os.ReadFile(s); err == nil {
				f.Add(d)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sc, err := scan(b)
		if err != nil {
			return
		}
		if sc.validEnd < headerLen || sc.validEnd > int64(len(b)) {
			t.Fatalf("validEnd %d outside the file of %d bytes", sc.validEnd, len(b))
		}
		for _, r := range sc.records {
			if r.rows < 1 || len(r.data) == 0 || r.data[len(r.data)-1] != '\n' || bytes.Count(r.data, []byte{'\n'}) != r.rows {
				t.Fatalf("record %+v breaks the format's promises", r)
			}
		}
		// What was valid stays valid when the torn tail is cut off.
		again, err := scan(b[:sc.validEnd])
		if err != nil || len(again.records) < len(sc.records) {
			t.Fatalf("rescanning the valid part lost records: %d then %d (%v)", len(sc.records), len(again.records), err)
		}
	})
}
