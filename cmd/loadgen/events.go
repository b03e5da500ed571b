package main

import (
	"bytes"
	"fmt"
	"time"
)

// Event templates: realistic ~240 B analytics events with nested objects,
// non-ASCII text (Zürich, 東京, an emoji), a 64-bit integer that does not
// fit a float64 exactly, and an "id" field patched in place per event. They
// are split around the id so a body is built once per worker and only the
// id digits change between requests.
var templates = []string{
	`{"timestamp":"%s","id":"%s","event":"page_view","user":{"id":9007199254740993,"plan":"pro","geo":{"city":"Zürich","country":"CH"}},"page":{"path":"/pricing","title":"Preise – Übersicht"},"ok":true}`,
	`{"timestamp":"%s","id":"%s","event":"click","user":{"id":18446744073709551615,"plan":"free","geo":{"city":"東京","country":"JP"}},"target":{"sel":"#buy","label":"購入する 🛒"},"vp":[390,844]}`,
	`{"timestamp":"%s","id":"%s","event":"purchase","user":{"id":123456789012345678,"plan":"team","geo":{"city":"São Paulo","country":"BR"}},"order":{"total":129.9,"items":3},"note":"🎉 first"}`,
	`{"timestamp":"%s","id":"%s","event":"signup","user":{"id":-9223372036854775808,"plan":"trial","geo":{"city":"Kraków","country":"PL"}},"form":{"step":2,"f":["email"]},"ref":"café"}`,
}

// idWidth is the width of an event id: run (8 hex) - conn (4 digits) - seq
// (10 digits), fixed so ids can be patched in place.
const (
	connDigits = 4
	seqDigits  = 10
	idWidth    = 8 + 1 + connDigits + 1 + seqDigits
)

// body is one worker's request body of k events whose ids are rewritten in
// place before each request.
type body struct {
	buf    []byte
	seqOff []int // offset of each event's seq digits in buf
	idOff  []int // offset of each event's whole id in buf
	seq    uint64
}

// newBody builds k events for connection conn of run.
func newBody(run string, conn, k int, ts time.Time) *body {
	stamp := ts.UTC().Format("2006-01-02T15:04:05.000Z")
	placeholder := fmt.Sprintf("%s-%0*d-%0*d", run, connDigits, conn, seqDigits, 0)
	b := &body{seqOff: make([]int, k), idOff: make([]int, k)}
	for i := range k {
		ev := fmt.Sprintf(templates[(conn+i)%len(templates)], stamp, placeholder)
		at := bytes.Index([]byte(ev), []byte(placeholder))
		b.idOff[i] = len(b.buf) + at
		b.seqOff[i] = b.idOff[i] + idWidth - seqDigits
		b.buf = append(b.buf, ev...)
		b.buf = append(b.buf, '\n')
	}
	return b
}

// next gives every event a fresh id and returns the body.
func (b *body) next() []byte {
	for _, off := range b.seqOff {
		b.seq++
		v := b.seq
		d := b.buf[off : off+seqDigits]
		for j := seqDigits - 1; j >= 0; j-- {
			d[j] = byte('0' + v%10)
			v /= 10
		}
	}
	return b.buf
}

// appendIDs appends the ids of the current events, one per line.
func (b *body) appendIDs(dst []byte) []byte {
	for _, off := range b.idOff {
		dst = append(dst, b.buf[off:off+idWidth]...)
		dst = append(dst, '\n')
	}
	return dst
}
