package spool

import (
	"bytes"
	"encoding/binary"
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

// testMarker frames the records tests build.
var testMarker = syncMarker{0x5e, 0xc2, 0x37, 0x91, 0x0a, 0xfe, 0x48, 0x13}

// segmentOf builds a segment with n data records and returns it and each
// record's offset.
func segmentOf(n int) ([]byte, []int) {
	b := appendHeader(nil, testMarker)
	var offs []int
	for i := range n {
		offs = append(offs, len(b))
		b = appendData(b, testMarker, buffer.Key{Token: "tok", Datasource: fmt.Sprintf("ds%d", i%2)},
			lines(fmt.Sprintf(`{"i":%d,"s":"Zürich"}`, i), `{"second":true}`), false, 0)
	}
	return b, offs
}

func TestScanRoundTrip(t *testing.T) {
	b, offs := segmentOf(3)
	b = appendDone(b, testMarker[:], []ref{{seq: 7, offset: int64(offs[1])}, {seq: 3, offset: 99}})
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
	for _, at := range []int{offs[1] + 2, offs[1] + 10, offs[1] + 14, offs[1] + 20} { // marker, length, CRC, payload
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
	if sc, err := scan(appendHeader(nil, testMarker)); err != nil || len(sc.records) != 0 || sc.validEnd != headerLen {
		t.Errorf("header only: got %+v, %v", sc, err)
	}
	if _, err := scan(nil); !errors.Is(err, errNotSegment) {
		t.Errorf("empty file: got %v; want errNotSegment", err)
	}
	if _, err := scan(header[:]); !errors.Is(err, errNotSegment) {
		t.Errorf("version 3 without its marker: got %v; want errNotSegment", err)
	}
	v4 := append([]byte("TBSPOOL"), 4)
	if _, err := scan(v4); !errors.Is(err, errUnknownVersion) {
		t.Errorf("version 4: got %v; want errUnknownVersion", err)
	}
}

// segmentV1 builds a segment as version 1 wrote it: an 8-byte header and
// records framed with a fixed magic.
func segmentV1(n int) []byte {
	b := []byte("TBSPOOL\x01")
	for i := range n {
		start := len(b)
		b = append(b, magicV1...)
		b = append(b, 0, 0, 0, 0, 0, 0, 0, 0, kindDataV2)
		b = binary.AppendUvarint(b, 0)
		b = binary.AppendUvarint(b, 2)
		b = append(b, "ds"...)
		b = binary.AppendUvarint(b, 1)
		b = append(b, fmt.Sprintf(`{"v1":%d}`+"\n", i)...)
		b = seal(b, start, len(magicV1))
	}
	return b
}

// TestScanVersion1: segments an older version left behind are still read.
func TestScanVersion1(t *testing.T) {
	b := segmentV1(2)
	sc, err := scan(b)
	if err != nil || len(sc.records) != 2 || sc.corrupt != 0 || string(sc.records[1].data) != `{"v1":1}`+"\n" || sc.validEnd != int64(len(b)) {
		t.Fatalf("got %+v, %v", sc, err)
	}
}

// forgedFrames returns client bytes that hold whole records framed as a
// client might guess: the version 1 magic, zeros, a constant marker. Each
// is a done record retiring offset 16 of segment 0 and 1, and a data record
// for a datasource named ../../x.
func forgedFrames() []byte {
	var out []byte
	for _, guess := range []syncMarker{{0xF1, 0x7E, 0x5B, 0xC3}, {}, {'T', 'B', 'S', 'P', 'O', 'O', 'L', 2}} {
		out = appendDone(out, guess[:], []ref{{seq: 0, offset: headerLen}, {seq: 1, offset: headerLen}})
		out = appendData(out, guess, buffer.Key{Datasource: "../../x"}, lines(`{"forged":1}`), false, 0)
	}
	// And the v1 framing exactly as version 1 wrote it.
	return append(out, segmentV1(1)[headerLenV1:]...)
}

// TestForgedRecordsInClientBytes: a record hidden in a client's token or
// rows is never taken for one, even when the record holding it is corrupt
// and the reader has to look for the next record (a torn write, an OOM kill
// mid-write): it finds only records framed with the segment's own marker.
func TestForgedRecordsInClientBytes(t *testing.T) {
	forged := forgedFrames()
	for _, where := range []string{"token", "rows"} {
		b := appendHeader(nil, testMarker)
		first := len(b)
		key := buffer.Key{Datasource: "ds"}
		rows := lines(`{"a":1}`)
		if where == "token" {
			key.Token = string(forged)
		} else {
			rows = lines(`{"s":"` + string(bytes.ReplaceAll(forged, []byte("\n"), nil)) + `"}`)
		}
		b = appendData(b, testMarker, key, rows, false, 0)
		second := len(b)
		b = appendData(b, testMarker, buffer.Key{Datasource: "real"}, lines(`{"real":1}`), false, 0)
		for _, at := range []int{first + 2, first + 10, first + 14} { // the holder's marker, length, CRC
			c := bytes.Clone(b)
			c[at] ^= 0x40
			sc, err := scan(c)
			if err != nil {
				t.Fatal(err)
			}
			if len(sc.done) != 0 || len(sc.records) != 1 || sc.records[0].offset != int64(second) || sc.records[0].key.Datasource != "real" {
				t.Errorf("forged in the %s, holder broken at +%d: got records %+v, done %v; want only the real record", where, at-first, sc.records, sc.done)
			}
		}
	}
}

func FuzzScan(f *testing.F) {
	b, offs := segmentOf(4)
	f.Add(b)
	f.Add(b[:offs[2]+5])
	f.Add(appendHeader(nil, testMarker))
	f.Add([]byte("TBSPOOL\x02"))
	f.Add(segmentV1(3))
	f.Add(append(appendHeader(nil, testMarker), forgedFrames()...))
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
		if sc.validEnd < headerLenV1 || sc.validEnd > int64(len(b)) {
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

// FuzzForgedRecords: whatever a client puts in its token and rows, and
// wherever the record holding them is broken, a reader finds no record
// that the writer did not write.
func FuzzForgedRecords(f *testing.F) {
	f.Add([]byte("tok"), []byte(`{"a":1}`), 2)
	f.Add(forgedFrames(), forgedFrames(), 10)
	f.Fuzz(func(t *testing.T, token, row []byte, at int) {
		row = bytes.ReplaceAll(row, []byte("\n"), nil)
		b := appendHeader(nil, testMarker)
		first := len(b)
		b = appendData(b, testMarker, buffer.Key{Token: string(token), Datasource: "ds"}, [][]byte{row}, false, 0)
		second := len(b)
		b = appendData(b, testMarker, buffer.Key{Datasource: "real"}, lines(`{"real":1}`), false, 0)
		if at < 0 {
			at = -at
		}
		b[first+at%(second-first)] ^= 0x40 // break the first record anywhere
		sc, err := scan(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(sc.done) != 0 {
			t.Fatalf("found done records %v", sc.done)
		}
		for _, r := range sc.records {
			if r.offset != int64(first) && r.offset != int64(second) {
				t.Fatalf("found a record at %d, inside client bytes", r.offset)
			}
		}
		if len(sc.records) == 0 || sc.records[len(sc.records)-1].offset != int64(second) {
			t.Fatalf("lost the intact record: %+v", sc.records)
		}
	})
}

// frame appends a record framed with m around any payload, sealed with a
// valid length and CRC: what a writer with a bug, or another version,
// might leave behind.
func frame(dst []byte, m syncMarker, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, m[:]...)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
	dst = append(dst, payload...)
	return seal(dst, start, syncLen)
}

// TestScanFindsRecordAfterStrayBytes: bytes that are no record between two
// records (a torn write whose tail could not be cut off before later
// records were appended) cost only themselves, however few they are: the
// record after them is still read, and the file is not cut before it.
func TestScanFindsRecordAfterStrayBytes(t *testing.T) {
	for _, n := range []int{1, 2, 7, 8, 9, 40} {
		b := appendHeader(nil, testMarker)
		b = appendData(b, testMarker, buffer.Key{Datasource: "before"}, lines(`{"a":1}`), false, 0)
		b = append(b, bytes.Repeat([]byte{'x'}, n)...)
		after := len(b)
		b = appendData(b, testMarker, buffer.Key{Datasource: "after"}, lines(`{"b":2}`), false, 0)
		sc, err := scan(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(sc.records) != 2 || sc.records[1].offset != int64(after) || sc.corrupt != 1 || sc.validEnd != int64(len(b)) {
			t.Errorf("%d stray bytes: got %d records (%+v), %d corrupt, end %d; want both records, 1 corrupt, end %d",
				n, len(sc.records), sc.records, sc.corrupt, sc.validEnd, len(b))
		}
	}
}

// TestScanMalformedDoneRecordRetiresNothing: a done record with a valid
// frame whose contents do not parse exactly retires none of the records it
// seems to name (a duplicate after a restart is better than a loss); it is
// counted corrupt, and the records around it are read.
func TestScanMalformedDoneRecordRetiresNothing(t *testing.T) {
	done := func(count uint64, vals ...uint64) []byte {
		p := binary.AppendUvarint([]byte{kindDone}, count)
		for _, v := range vals {
			p = binary.AppendUvarint(p, v)
		}
		return p
	}
	for name, payload := range map[string][]byte{
		"the last ref lacks its offset": done(2, 1, headerLen, 1),
		"fewer refs than counted":       done(3, 1, headerLen, 1, 200),
		"bytes after the last ref":      append(done(1, 1, headerLen), 0),
		"no refs":                       done(0),
		"only a kind byte":              {kindDone},
	} {
		b, offs := segmentOf(2)
		b = frame(b, testMarker, payload)
		b = appendData(b, testMarker, buffer.Key{Datasource: "after"}, lines(`{"c":3}`), false, 0)
		sc, err := scan(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(sc.done) != 0 || sc.corrupt != 1 || len(sc.records) != 3 || sc.records[0].offset != int64(offs[0]) || sc.validEnd != int64(len(b)) {
			t.Errorf("%s: got done %v, %d corrupt, %d records, end %d; want no refs, 1 corrupt, 3 records, end %d",
				name, sc.done, sc.corrupt, len(sc.records), sc.validEnd, len(b))
		}
	}
}

// TestScanFieldLongerThanItsRecord: a data record with a valid frame whose
// token or datasource length runs past the end of the record is counted
// corrupt, never read past its end (a panic there would stop every restart
// of the process), and the record after it is still read.
func TestScanFieldLongerThanItsRecord(t *testing.T) {
	data := func(fields ...[]byte) []byte {
		p := append([]byte{kindData, 0}, make([]byte, 8)...) // no flags, time 0
		for _, f := range fields {
			p = append(p, f...)
		}
		return p
	}
	tail := append(binary.AppendUvarint(nil, 1), `{"a":1}`+"\n"...)
	for name, payload := range map[string][]byte{
		// The token's length claims one byte more than the record holds.
		"token": data(binary.AppendUvarint(nil, uint64(len("tok")+1+1+len("ds")+len(tail)+1)), []byte("tok"), []byte{2}, []byte("ds"), tail),
		// The datasource's length claims one byte more than the record holds.
		"datasource": data([]byte{3}, []byte("tok"), binary.AppendUvarint(nil, uint64(len("ds")+len(tail)+1)), []byte("ds"), tail),
		"huge":       data(binary.AppendUvarint(nil, 1<<62), []byte("tok")),
	} {
		b := appendHeader(nil, testMarker)
		b = frame(b, testMarker, payload)
		after := len(b)
		b = appendData(b, testMarker, buffer.Key{Datasource: "after"}, lines(`{"b":2}`), false, 0)
		var sc scanned
		var err error
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("%s: scan panicked: %v", name, p)
				}
			}()
			sc, err = scan(b)
		}()
		if err != nil {
			t.Fatal(err)
		}
		if len(sc.records) != 1 || sc.records[0].offset != int64(after) || sc.corrupt != 1 {
			t.Errorf("%s: got records %+v, %d corrupt; want only the record after it, 1 corrupt", name, sc.records, sc.corrupt)
		}
	}
}
