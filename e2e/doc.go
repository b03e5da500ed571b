// Package e2e holds the process-level tests of tbproxy. TestMain builds the
// real binary once (with -race when the tests run with it); each test runs
// it as a child process on 127.0.0.1 against a fakebird upstream, a real
// clickhouse-server, nats-server or headless Chromium, configured only
// through environment variables, and asserts what a user would see: status
// codes, exit statuses, log lines and the rows that reach upstream.
//
// The package has no code of its own; its helpers are in process_test.go
// (running the binary and talking to it) and ledger_test.go (the fault
// suite's record of what was acknowledged and where it ended up).
package e2e
