package upstream

import (
	"io"

	"github.com/tbproxy/tbproxy/buffer"
)

// Batch is what an upstream is given to send: the events of one key
// (token and datasource) as NDJSON. An upstream only reads it, and must not
// keep it, or any slice of Parts, after its Send returns.
type Batch struct {
	Key buffer.Key
	// Rows and Bytes are the events and NDJSON bytes the batch carries.
	Rows, Bytes int
	// First is the Accepted time of the oldest event, Unix nanoseconds:
	// the same for every attempt at the batch, so an upstream can derive
	// an idempotency token from it (ClickHouse does).
	First int64
	// Parts hold the NDJSON as runs of whole lines, each line ending in
	// '\n'. They point into buffer memory and are never copied into one
	// slice, so a batch costs a few pointers per request it carries.
	Parts [][]byte
}

// WriteTo writes the batch as NDJSON (every line ends in '\n') to w.
func (b *Batch) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, p := range b.Parts {
		m, err := w.Write(p)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
