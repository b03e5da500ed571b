// Package idempotency remembers Idempotency-Keys
// (draft-ietf-httpapi-idempotency-key-header) so that a request retried
// with the same key is stored at most once per (scope, datasource, key)
// within a window, and its retries are told what the first request was.
//
// A key is looked up by Begin, with the client's scope (its name, a hex
// SHA-256 of its token, or "") and the Fingerprint of the request's
// decoded body:
//
//	Proceed   a new key: store the request, then Stored (optional) and Done,
//	          or Forget if the request was refused
//	Replay    seen with the same body: answer what the first request got
//	Mismatch  seen with another body: 422
//	InFlight  the first request has not ended: Wait for its answer, or 409
//	Full      MaxKeys keys are remembered and all are in flight: 503
//
// A key is remembered for Window after Done ended its request. The table
// holds at most MaxKeys keys, in flight ones included; a new key beyond
// that evicts the key that finished first (counted in
// tbproxy_idempotency_evicted_total). Expired keys are freed a few at a
// time by Begin, so no call does unbounded work. The key itself is not
// kept: the table and the log hold a SHA-256 digest of scope, datasource
// and key, and of the body.
//
// # Persistence
//
// With Options.Dir, the window survives a restart. Dir/idempotency.log is
// an append-only log of fixed-size records (record.go): an 8-byte header
// ("TBIK", version 1, record size 256), then 256-byte records of digest,
// fingerprint, time, answer and kind (stored, done, forgotten), each with
// a CRC-32C. No byte a client sends builds a file name, and no client
// bytes but digests reach the disk. Open reads the log, keeps the newest
// MaxKeys unexpired keys, skips (and counts) corrupt records, a torn last
// record among them, and rewrites the file with only what it kept (a
// temporary file, synced, renamed over the log, and the directory
// synced). While running, the log is rewritten the same way in the
// background once it holds more than twice as many records as live keys.
//
// Stored appends the key with its provisional answer once the request's
// events are stored; Done appends the final answer if it differs (or if
// Stored was not called); Forget appends a record that forgets a key
// Stored had written. After a crash between Stored and Done, a retry
// replays the provisional answer, and the key's window counts from
// Stored. Persisting keys is only as good as the storage of the events:
// with events in memory only, a crash loses the events but not their key,
// and a retry is told they were stored.
//
// # What a crash can lose
//
// With Fsync false, records are written to the OS when Stored, Done and
// Forget run, and synced only by compactions and Close. A crash of the
// process loses nothing. A crash of the machine (or of its power) loses
// the records the OS had not written back, by default up to about the
// last 30 seconds of them (Linux's vm.dirty_expire_centisecs), and may
// tear the last one: Open skips what is torn. A key whose record was lost
// is new again after the restart, so a retry of its request is stored a
// second time.
//
// With Fsync true, Stored, Done and Forget return only once their record
// is synced, so a key is durable before the client is answered. What a
// crash can still lose is a key whose events were stored but whose
// Stored had not returned: that client was never answered, and its retry
// is stored again. Appends are serialised on the log's lock and not
// grouped, so each keyed request adds one fsync to its latency (two, if
// Done's answer differs from Stored's), and keyed requests go through at
// most one per fsync: about 5,000 a second where an fsync takes 200µs
// (BenchmarkBegin/dir-fsync).
package idempotency
