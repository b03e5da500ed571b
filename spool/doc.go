// Package spool is a write-ahead log in front of the buffer: every accepted
// request is appended to a segment file before the client gets its answer,
// and a segment is deleted only once every event in it was delivered
// upstream or dropped with a reason. After a crash, the segments left
// behind are replayed into the buffer, so an acknowledged event survives
// the process (and, with fsync, the machine's power).
package spool
