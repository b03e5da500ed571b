package spool

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"

	"github.com/tbproxy/tbproxy/buffer"
)

// Segment file format, version 3:
//
//	header  "TBSPOOL" 0x03, sync marker          16 bytes
//	record  sync marker                           8 bytes
//	        payload length (little endian)      4 bytes
//	        CRC-32C of length and payload       4 bytes
//	        payload                             length bytes
//
// A payload is a kind byte and then, for kindData: a flags byte (flagSpilled:
// the rows were not put in memory when written, see backlog.go), when it was
// written (Unix nanoseconds, 8 bytes little endian), the token, the
// datasource (each a uvarint length and bytes), the row count (uvarint) and
// the rows as NDJSON (every line ends in '\n'); for kindDone: a count and that many
// (segment number, offset) pairs of data records, in any segment, that must
// not be replayed: delivered, dropped, or refused after they were written.
// Records are never rewritten; a record is retired by appending a kindDone
// that names it, so a restart replays only what was still owed.
//
// The sync marker lets a reader find the next record after a corrupt one.
// Each process draws its own at random and writes it in the header of
// every segment it starts, so no client can know it: rows and tokens are
// client bytes, and a whole record hidden in them (a "done" record retiring
// real rows, or rows for a datasource named ../../x) must never be taken
// for a record. Version 2 was version 3 with kindDataV2, a data record
// without the flags and the time. Version 1 used a fixed magic, 0xF1 0x7E
// 0x5B 0xC3, after an 8-byte header. Segments of both, left by an older
// release, are still read; an older release leaves version 3 segments in
// place rather than misread them.
const (
	headerLen  = 16
	syncLen    = 8
	frameLen   = syncLen + 8
	kindDataV2 = 1
	kindDone   = 2
	kindData   = 3

	flagSpilled = 1

	headerLenV1 = 8
)

var (
	header  = [8]byte{'T', 'B', 'S', 'P', 'O', 'O', 'L', 3}
	magicV1 = []byte{0xF1, 0x7E, 0x5B, 0xC3}
	crcTab  = crc32.MakeTable(crc32.Castagnoli)

	errUnknownVersion = errors.New("spool: segment of an unknown version")
	errNotSegment     = errors.New("spool: not a segment file")
)

// maxPayload bounds a record's length, so a corrupt length cannot make the
// reader allocate or skip gigabytes.
const maxPayload = 1 << 30

// syncMarker is the random marker a process frames its records with.
type syncMarker [syncLen]byte

// newSyncMarker draws a marker no client can guess.
func newSyncMarker() (syncMarker, error) {
	var m syncMarker
	_, err := rand.Read(m[:])
	return m, err
}

// appendHeader appends a segment's header for records framed with m.
func appendHeader(dst []byte, m syncMarker) []byte {
	return append(append(dst, header[:]...), m[:]...)
}

// appendData appends one data record for key and lines, framed with m,
// written at (Unix nanoseconds), spilled or not (see flagSpilled).
func appendData(dst []byte, m syncMarker, key buffer.Key, lines [][]byte, spilled bool, at int64) []byte {
	start := len(dst)
	dst = append(dst, m[:]...)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0) // length and CRC, set below
	var flags byte
	if spilled {
		flags = flagSpilled
	}
	dst = append(dst, kindData, flags)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(at))
	dst = binary.AppendUvarint(dst, uint64(len(key.Token)))
	dst = append(dst, key.Token...)
	dst = binary.AppendUvarint(dst, uint64(len(key.Datasource)))
	dst = append(dst, key.Datasource...)
	dst = binary.AppendUvarint(dst, uint64(len(lines)))
	for _, l := range lines {
		dst = append(dst, l...)
		dst = append(dst, '\n')
	}
	return seal(dst, start, syncLen)
}

// recordSize bounds the payload size of the data record for key and lines
// of size bytes (buffer.Size: the lines and their '\n's), without encoding
// it.
func recordSize(key buffer.Key, size int) int {
	return 10 + 3*binary.MaxVarintLen64 + len(key.Token) + len(key.Datasource) + size
}

// ref names a data record: its segment's number and its offset there.
type ref struct {
	seq    uint64
	offset int64
}

// appendDone appends a record, framed with marker (a segment's sync
// marker, or version 1's magic), that retires the data records refs name.
func appendDone(dst []byte, marker []byte, refs []ref) []byte {
	start := len(dst)
	dst = append(dst, marker...)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
	dst = append(dst, kindDone)
	dst = binary.AppendUvarint(dst, uint64(len(refs)))
	for _, r := range refs {
		dst = binary.AppendUvarint(dst, r.seq)
		dst = binary.AppendUvarint(dst, uint64(r.offset))
	}
	return seal(dst, start, len(marker))
}

// seal fills in the length and CRC of the record that starts at start,
// after a sync of n bytes.
func seal(dst []byte, start, n int) []byte {
	payload := dst[start+n+8:]
	binary.LittleEndian.PutUint32(dst[start+n:], uint32(len(payload)))
	crc := crc32.Update(0, crcTab, dst[start+n:start+n+4])
	crc = crc32.Update(crc, crcTab, payload)
	binary.LittleEndian.PutUint32(dst[start+n+4:], crc)
	return dst
}

// record is one data record read back from a segment. Data aliases the
// segment's bytes.
type record struct {
	offset  int64
	key     buffer.Key
	rows    int
	data    []byte // NDJSON, every line ends in '\n'
	spilled bool   // written while the rows were not in memory
	at      int64  // when it was written, Unix nanoseconds; 0 in version 2
}

// scanned is what a segment holds: its data records, the records (of any
// segment) it retires, where its last whole record ends, and how many
// corrupt records were skipped or cut off.
type scanned struct {
	records  []record
	done     []ref
	validEnd int64
	corrupt  int
	marker   []byte // what the segment's records are framed with
}

// scan reads a segment's bytes. A record that fails its checks is skipped
// to the next record that passes them, found by the segment's sync marker;
// if none follows, it is the torn tail of an interrupted write and validEnd
// excludes it. Both count as corrupt. A file too short for a header, or
// with another header, is an error.
func scan(b []byte) (scanned, error) {
	var out scanned
	if len(b) < headerLenV1 || !bytes.Equal(b[:len(header)-1], header[:len(header)-1]) {
		return out, errNotSegment
	}
	var sync []byte
	off := headerLenV1
	switch b[len(header)-1] {
	case 1:
		sync = magicV1
	case 2, header[len(header)-1]:
		if len(b) < headerLen {
			return out, errNotSegment
		}
		sync, off = b[headerLenV1:headerLen], headerLen
	default:
		return out, errUnknownVersion
	}
	out.validEnd = int64(off)
	out.marker = bytes.Clone(sync)
	for off < len(b) {
		payload, next, ok := frameAt(b, off, sync)
		if !ok {
			// Find the next record that passes its checks, if any.
			resync := -1
			for from := off + 1; from < len(b); {
				i := bytes.Index(b[from:], sync)
				if i < 0 {
					break
				}
				if _, _, ok := frameAt(b, from+i, sync); ok {
					resync = from + i
					break
				}
				from += i + 1
			}
			out.corrupt++
			if resync < 0 {
				break // torn tail: validEnd stays before it
			}
			off = resync
			continue
		}
		if r, done, ok := decode(payload, int64(off)); !ok {
			out.corrupt++ // a valid frame with a payload we cannot read
		} else if done != nil {
			out.done = append(out.done, done...)
		} else {
			out.records = append(out.records, r)
		}
		off = next
		out.validEnd = int64(off)
	}
	return out, nil
}

// frameAt checks the record framed with sync at off and returns its
// payload and where the next record starts.
func frameAt(b []byte, off int, sync []byte) (payload []byte, next int, ok bool) {
	s, fl := len(sync), len(sync)+8
	if len(b)-off < fl || !bytes.Equal(b[off:off+s], sync) {
		return nil, 0, false
	}
	n := binary.LittleEndian.Uint32(b[off+s:])
	if n > maxPayload || int(n) > len(b)-off-fl {
		return nil, 0, false
	}
	payload = b[off+fl : off+fl+int(n)]
	crc := crc32.Update(0, crcTab, b[off+s:off+s+4])
	if crc32.Update(crc, crcTab, payload) != binary.LittleEndian.Uint32(b[off+s+4:]) {
		return nil, 0, false
	}
	return payload, off + fl + int(n), true
}

// decode reads a payload: a data record, or the records a done record
// retires (nil for data records).
func decode(p []byte, off int64) (record, []ref, bool) {
	if len(p) == 0 {
		return record{}, nil, false
	}
	kind, p := p[0], p[1:]
	switch kind {
	case kindDone:
		count, n := binary.Uvarint(p)
		if n <= 0 || count == 0 || count > uint64(len(p)) {
			return record{}, nil, false
		}
		p = p[n:]
		refs := make([]ref, 0, count)
		for range count {
			seq, n1 := binary.Uvarint(p)
			if n1 <= 0 {
				return record{}, nil, false
			}
			o, n2 := binary.Uvarint(p[n1:])
			if n2 <= 0 {
				return record{}, nil, false
			}
			refs = append(refs, ref{seq: seq, offset: int64(o)})
			p = p[n1+n2:]
		}
		if len(p) != 0 {
			return record{}, nil, false
		}
		return record{}, refs, true
	case kindData, kindDataV2:
		var r record
		if kind == kindData {
			if len(p) < 9 {
				return record{}, nil, false
			}
			r.spilled, r.at = p[0]&flagSpilled != 0, int64(binary.LittleEndian.Uint64(p[1:9]))
			p = p[9:]
		}
		token, p, ok := field(p)
		if !ok {
			return record{}, nil, false
		}
		ds, p, ok := field(p)
		if !ok {
			return record{}, nil, false
		}
		rows, n := binary.Uvarint(p)
		if n <= 0 || rows == 0 || rows > uint64(len(p)) {
			return record{}, nil, false
		}
		data := p[n:]
		if len(data) == 0 || data[len(data)-1] != '\n' || uint64(bytes.Count(data, []byte{'\n'})) != rows {
			return record{}, nil, false
		}
		r.offset, r.key, r.rows, r.data = off, buffer.Key{Token: string(token), Datasource: string(ds)}, int(rows), data
		return r, nil, true
	}
	return record{}, nil, false
}

func field(p []byte) ([]byte, []byte, bool) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return nil, nil, false
	}
	return p[k : k+int(n)], p[k+int(n):], true
}
