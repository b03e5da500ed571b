package idempotency

import (
	"encoding/binary"
	"hash/crc32"
	"math"
	"unicode/utf8"
)

// The log file is a header and then fixed-size records, all little-endian:
//
//	header (8 bytes):   magic "TBIK" | version uint16 (1) | record size uint16 (256)
//	record (256 bytes): digest [32] | fingerprint [32] | at int64 (unix ns) |
//	                    status uint16 | kind uint8 | error length uint8 |
//	                    successful uint32 | quarantined uint32 |
//	                    error [168], zero-padded | CRC-32C of the 252 bytes before it
//
// Records are framed by their offset alone: the error message, the only
// text, sits length-prefixed in a fixed slot, so whatever its bytes (an
// upstream message may quote the client's) they cannot be taken for a
// record boundary, and a torn or corrupt record costs only itself. The
// client's key is on disk only as the digest.
const (
	headerSize = 8
	recordSize = 256
	logVersion = 1

	offSum    = 32
	offAt     = 64
	offStatus = 72
	offKind   = 74
	offErrLen = 75
	offOK     = 76
	offQuar   = 80
	offErr    = 84
	offCRC    = offErr + MaxErrorBytes
)

// The CRC ends the record.
var _ = [1]struct{}{}[recordSize-(offCRC+4)]

// MaxErrorBytes is the most bytes of Answer.Error the store keeps: a
// longer message is cut (at a UTF-8 boundary) by Stored and Done, with or
// without Dir, so that an answer replays the same before and after a
// restart.
const MaxErrorBytes = 168

var logMagic = [4]byte{'T', 'B', 'I', 'K'}

// crcTable is CRC-32C (Castagnoli), which amd64 and arm64 compute in
// hardware.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

// kind says what a record tells about its key.
type kind uint8

const (
	kindStored    kind = 1 // the request's events are stored; the answer is provisional
	kindDone      kind = 2 // the request ended with this, its final answer
	kindForgotten kind = 3 // the request was refused after all: forget the key
)

// record is one log record, decoded.
type record struct {
	digest [32]byte
	sum    [32]byte
	at     int64
	kind   kind
	answer Answer
}

// appendHeader appends the log file's header to b.
func appendHeader(b []byte) []byte {
	b = append(b, logMagic[:]...)
	b = binary.LittleEndian.AppendUint16(b, logVersion)
	return binary.LittleEndian.AppendUint16(b, recordSize)
}

// validHeader reports whether h is a header this version writes.
func validHeader(h []byte) bool {
	return len(h) >= headerSize && [4]byte(h[:4]) == logMagic &&
		binary.LittleEndian.Uint16(h[4:]) == logVersion &&
		binary.LittleEndian.Uint16(h[6:]) == recordSize
}

// encode writes r into b, which must be recordSize bytes long. The error
// message must already be cut to MaxErrorBytes (cutError).
func (r *record) encode(b []byte) {
	b = b[:recordSize]
	copy(b, r.digest[:])
	copy(b[offSum:], r.sum[:])
	binary.LittleEndian.PutUint64(b[offAt:], uint64(r.at))
	binary.LittleEndian.PutUint16(b[offStatus:], uint16(clamp(int64(r.answer.Status), math.MaxUint16)))
	b[offKind] = byte(r.kind)
	n := copy(b[offErr:offCRC], r.answer.Error)
	b[offErrLen] = byte(n)
	clear(b[offErr+n : offCRC])
	binary.LittleEndian.PutUint32(b[offOK:], uint32(clamp(int64(r.answer.Successful), math.MaxUint32)))
	binary.LittleEndian.PutUint32(b[offQuar:], uint32(clamp(int64(r.answer.Quarantined), math.MaxUint32)))
	binary.LittleEndian.PutUint32(b[offCRC:], crc32.Checksum(b[:offCRC], crcTable))
}

// decode reads a record from b (recordSize bytes) into r, and reports
// whether it is whole: its checksum matches and its fields make sense.
func (r *record) decode(b []byte) bool {
	b = b[:recordSize]
	if crc32.Checksum(b[:offCRC], crcTable) != binary.LittleEndian.Uint32(b[offCRC:]) {
		return false
	}
	k := kind(b[offKind])
	n := int(b[offErrLen])
	if k < kindStored || k > kindForgotten || n > MaxErrorBytes {
		return false
	}
	r.digest = [32]byte(b[:32])
	r.sum = [32]byte(b[offSum : offSum+32])
	r.at = int64(binary.LittleEndian.Uint64(b[offAt:]))
	r.kind = k
	r.answer = Answer{
		Status:      int(binary.LittleEndian.Uint16(b[offStatus:])),
		Successful:  int(binary.LittleEndian.Uint32(b[offOK:])),
		Quarantined: int(binary.LittleEndian.Uint32(b[offQuar:])),
	}
	if n > 0 {
		r.answer.Error = string(b[offErr : offErr+n])
	}
	return true
}

// clamp limits v to 0..hi.
func clamp(v, hi int64) int64 {
	return min(max(v, 0), hi)
}

// cutError returns a with its error message cut to MaxErrorBytes, at a
// UTF-8 boundary.
func cutError(a Answer) Answer {
	if len(a.Error) <= MaxErrorBytes {
		return a
	}
	n := MaxErrorBytes
	for n > 0 && !utf8.RuneStart(a.Error[n]) {
		n--
	}
	a.Error = a.Error[:n]
	return a
}
