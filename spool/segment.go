package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"

	"github.com/tbproxy/tbproxy/buffer"
)

// Segment file format, version 1:
//
//	header  "TBSPOOL" 0x01                      8 bytes
//	record  magic 0xF1 0x7E 0x5B 0xC3           4 bytes
//	        payload length (little endian)      4 bytes
//	        CRC-32C of length and payload       4 bytes
//	        payload                             length bytes
//
// A payload is a kind byte and then, for kindData: the token, the datasource
// (each a uvarint length and bytes), the row count (uvarint) and the rows as
// NDJSON (every line ends in '\n'); for kindDone: a count and that many
// (segment number, offset) pairs of data records, in any segment, that must
// not be replayed: delivered, dropped, or refused after they were written.
// Records are never rewritten; a record is retired by appending a kindDone
// that names it, so a restart replays only what was still owed.
//
// The magic lets a reader find the next record after a corrupt one. It
// cannot occur in valid UTF-8 text (0xF1 must be followed by 0x80-0xBF), and
// a false match still has to pass the CRC.
const (
	headerLen = 8
	frameLen  = 12
	kindData  = 1
	kindDone  = 2
)

var (
	header = [headerLen]byte{'T', 'B', 'S', 'P', 'O', 'O', 'L', 1}
	magic  = [4]byte{0xF1, 0x7E, 0x5B, 0xC3}
	crcTab = crc32.MakeTable(crc32.Castagnoli)

	errUnknownVersion = errors.New("spool: segment of an unknown version")
	errNotSegment     = errors.New("spool: not a segment file")
)

// maxPayload bounds a record's length, so a corrupt length cannot make the
// reader allocate or skip gigabytes.
const maxPayload = 1 << 30

// appendData appends one framed data record for key and lines to dst.
func appendData(dst []byte, key buffer.Key, lines [][]byte) []byte {
	start := len(dst)
	dst = append(dst, magic[:]...)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0) // length and CRC, set below
	dst = append(dst, kindData)
	dst = binary.AppendUvarint(dst, uint64(len(key.Token)))
	dst = append(dst, key.Token...)
	dst = binary.AppendUvarint(dst, uint64(len(key.Datasource)))
	dst = append(dst, key.Datasource...)
	dst = binary.AppendUvarint(dst, uint64(len(lines)))
	for _, l := range lines {
		dst = append(dst, l...)
		dst = append(dst, '\n')
	}
	return seal(dst, start)
}

// ref names a data record: its segment's number and its offset there.
type ref struct {
	seq    uint64
	offset int64
}

// appendDone appends a record that retires the data records refs name.
func appendDone(dst []byte, refs []ref) []byte {
	start := len(dst)
	dst = append(dst, magic[:]...)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
	dst = append(dst, kindDone)
	dst = binary.AppendUvarint(dst, uint64(len(refs)))
	for _, r := range refs {
		dst = binary.AppendUvarint(dst, r.seq)
		dst = binary.AppendUvarint(dst, uint64(r.offset))
	}
	return seal(dst, start)
}

func seal(dst []byte, start int) []byte {
	payload := dst[start+frameLen:]
	binary.LittleEndian.PutUint32(dst[start+4:], uint32(len(payload)))
	crc := crc32.Update(0, crcTab, dst[start+4:start+8])
	crc = crc32.Update(crc, crcTab, payload)
	binary.LittleEndian.PutUint32(dst[start+8:], crc)
	return dst
}

// record is one data record read back from a segment. Data aliases the
// segment's bytes.
type record struct {
	offset int64
	key    buffer.Key
	rows   int
	data   []byte // NDJSON, every line ends in '\n'
}

// scanned is what a segment holds: its data records, the records (of any
// segment) it retires, where its last whole record ends, and how many
// corrupt records were skipped or cut off.
type scanned struct {
	records  []record
	done     []ref
	validEnd int64
	corrupt  int
}

// scan reads a segment's bytes. A record that fails its checks is skipped
// to the next record that passes them; if none follows, it is the torn tail
// of an interrupted write and validEnd excludes it. Both count as corrupt.
// A file too short for a header, or with another header, is an error.
func scan(b []byte) (scanned, error) {
	var out scanned
	if len(b) < headerLen || !bytes.Equal(b[:len(header)-1], header[:len(header)-1]) {
		return out, errNotSegment
	}
	if b[headerLen-1] != header[headerLen-1] {
		return out, errUnknownVersion
	}
	off := headerLen
	out.validEnd = headerLen
	for off < len(b) {
		payload, next, ok := frameAt(b, off)
		if !ok {
			// Find the next record that passes its checks, if any.
			resync := -1
			for from := off + 1; from < len(b); {
				i := bytes.Index(b[from:], magic[:])
				if i < 0 {
					break
				}
				if _, _, ok := frameAt(b, from+i); ok {
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

// frameAt checks the record framed at off and returns its payload and where
// the next record starts.
func frameAt(b []byte, off int) (payload []byte, next int, ok bool) {
	if len(b)-off < frameLen || !bytes.Equal(b[off:off+4], magic[:]) {
		return nil, 0, false
	}
	n := binary.LittleEndian.Uint32(b[off+4:])
	if n > maxPayload || int(n) > len(b)-off-frameLen {
		return nil, 0, false
	}
	payload = b[off+frameLen : off+frameLen+int(n)]
	crc := crc32.Update(0, crcTab, b[off+4:off+8])
	if crc32.Update(crc, crcTab, payload) != binary.LittleEndian.Uint32(b[off+8:]) {
		return nil, 0, false
	}
	return payload, off + frameLen + int(n), true
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
	case kindData:
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
		return record{offset: off, key: buffer.Key{Token: string(token), Datasource: string(ds)}, rows: int(rows), data: data}, nil, true
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
