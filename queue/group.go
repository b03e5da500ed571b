package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tbproxy/tbproxy/buffer"
)

// Message formats. A message without hdrBatch holds one request (the only
// format before group commit, still read): its key and reply in headers,
// its NDJSON as the body. A message with hdrBatch set to groupVersion is a
// group: its body is one record per request (appendRecord), so requests of
// any datasources and tokens share a message and each keeps its own reply.
const (
	hdrBatch     = "Tbproxy-Batch"
	groupVersion = "1"
	// mixedSubject is the subject token of a group whose requests are for
	// more than one datasource: a datasource name cannot contain '-', so
	// no datasource's subject is the same.
	mixedSubject = "mixed-group"
)

// recordHeader is a record's fixed part, big-endian: the lengths of its
// datasource (2 bytes), reply (2) and token (4), its row count (4) and the
// length of its data (4). The datasource, reply, token and data follow in
// that order; the data is the NDJSON lines, each ending in '\n'.
const recordHeader = 2 + 2 + 4 + 4 + 4

// recordLen is the length of a record of size bytes of lines.
func recordLen(key buffer.Key, reply string, size int) int {
	return recordHeader + len(key.Datasource) + len(reply) + len(key.Token) + size
}

// appendRecord appends one request to a group's body. The caller has
// checked the lengths fit their fields (PutWaiting's size check: a request
// fits in one message).
func appendRecord(b []byte, key buffer.Key, reply string, lines [][]byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(key.Datasource)))
	b = binary.BigEndian.AppendUint16(b, uint16(len(reply)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(key.Token)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(lines)))
	b = binary.BigEndian.AppendUint32(b, uint32(buffer.Size(lines)))
	b = append(b, key.Datasource...)
	b = append(b, reply...)
	b = append(b, key.Token...)
	for _, l := range lines {
		b = append(b, l...)
		b = append(b, '\n')
	}
	return b
}

// request is one client request read back from a message.
type request struct {
	key   buffer.Key
	reply string
	rows  int    // the row count its record states; -1 for a single-request message, which states none the bridge trusts
	data  []byte // its NDJSON lines; a slice of the message's body
	bad   string // why the message's framing already makes it malformed, or ""
}

// unpack returns msg's requests: a single-request message's one, or a
// group's, in order. A group's body that stops making sense part-way is
// returned as a last request with bad set and no datasource or data, so
// the records before it are still delivered and none is blamed for it.
func unpack(msg jetstream.Msg) []request {
	h := msg.Headers()
	version := h.Get(hdrBatch)
	if version == "" {
		return []request{{
			key:   buffer.Key{Datasource: h.Get(hdrDatasource), Token: h.Get(hdrToken)},
			reply: h.Get(hdrReply),
			rows:  -1,
			data:  msg.Data(),
		}}
	}
	body := msg.Data()
	// What cannot be read as records holds no rows to count or write down:
	// only its size is told.
	if version != groupVersion {
		return []request{{bad: fmt.Sprintf("not a tbproxy request: unknown group format %s (%d bytes)", strconv.Quote(version), len(body))}}
	}
	out := make([]request, 0, countRecords(body))
	for n := 1; len(body) > 0; n++ {
		r, rest, err := nextRecord(body, out)
		if err != nil {
			return append(out, request{bad: fmt.Sprintf("not a tbproxy request: record %d of the group: %v (%d bytes)", n, err, len(body))})
		}
		out = append(out, r)
		body = rest
	}
	if len(out) == 0 {
		out = append(out, request{bad: "not a tbproxy request: a group of no records"})
	}
	return out
}

// countRecords is how many records b holds, and 1 for a tail that is not
// one: the room unpack needs.
func countRecords(b []byte) int {
	n := 0
	for ; len(b) >= recordHeader; n++ {
		size := uint64(recordHeader) + uint64(binary.BigEndian.Uint16(b)) + uint64(binary.BigEndian.Uint16(b[2:])) +
			uint64(binary.BigEndian.Uint32(b[4:])) + uint64(binary.BigEndian.Uint32(b[12:]))
		if size > uint64(len(b)) {
			break
		}
		b = b[size:]
	}
	if len(b) > 0 {
		n++
	}
	return n
}

// nextRecord reads the record at the start of b and returns it and what
// follows it. prev are the records before it: a datasource or token the
// last one had is shared, not copied again.
func nextRecord(b []byte, prev []request) (request, []byte, error) {
	if len(b) < recordHeader {
		return request{}, nil, fmt.Errorf("%d bytes left, shorter than a record's header", len(b))
	}
	dsLen := int(binary.BigEndian.Uint16(b))
	replyLen := int(binary.BigEndian.Uint16(b[2:]))
	tokenLen := uint64(binary.BigEndian.Uint32(b[4:]))
	rows := int(binary.BigEndian.Uint32(b[8:]))
	dataLen := uint64(binary.BigEndian.Uint32(b[12:]))
	b = b[recordHeader:]
	// In uint64: four lengths of up to 32 bits cannot overflow it.
	if uint64(dsLen)+uint64(replyLen)+tokenLen+dataLen > uint64(len(b)) {
		return request{}, nil, fmt.Errorf("its lengths run past the end of the message")
	}
	r := request{rows: rows}
	var last buffer.Key
	if len(prev) > 0 {
		last = prev[len(prev)-1].key
	}
	r.key.Datasource, b = stringOf(b[:dsLen], last.Datasource), b[dsLen:]
	r.reply, b = string(b[:replyLen]), b[replyLen:]
	r.key.Token, b = stringOf(b[:tokenLen], last.Token), b[tokenLen:]
	r.data, b = b[:dataLen:dataLen], b[dataLen:]
	return r, b, nil
}

// stringOf returns b as a string: s when they are equal, else a copy.
func stringOf(b []byte, s string) string {
	if string(b) == s {
		return s
	}
	return string(b)
}

// countRows is how many lines data holds, split or not.
func countRows(data []byte) int { return bytes.Count(data, []byte{'\n'}) }
