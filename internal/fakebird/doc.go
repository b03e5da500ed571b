// Package fakebird is a fake Tinybird Events API upstream: a real HTTP server
// (net/http/httptest) that speaks POST /v0/events the way Tinybird does, as
// described in docs/tinybird-events-api.md sections 2-7. It is meant for
// flusher tests, end-to-end tests that run the built proxy binary,
// fault-injection suites and, via Start with Options.Addr, a standalone
// process for load tests.
//
// For every events request the server:
//
//   - authenticates the token from "Authorization: Bearer <t>" or ?token=<t>
//     (403 when missing or, with Options.Tokens, unknown);
//   - requires name= matching ^[A-Za-z_][A-Za-z0-9_]*$ (400);
//   - decodes Content-Encoding gzip, zstd or none (415 for anything else,
//     400 for a corrupt stream, 413 above Options.MaxReadBytes);
//   - splits the body into NDJSON lines, skipping blank lines, and requires
//     every line to be a JSON object (400, nothing recorded);
//   - answers 200 when wait=true and 202 otherwise, with the JSON body
//     {"successful_rows":N,"quarantined_rows":0}, and records the rows.
//
// Errors are always JSON: {"error":"...","documentation":"..."}.
//
// Tests steer the server with Script (a queue of responses consumed in
// order) and SetFault (a hook consulted for every request), inject outages
// with Down and Up, and wait for results with WaitRows, WaitRequests or
// Changed instead of sleeping. Every method of Server is safe for
// concurrent use.
//
// Typical use:
//
//	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{"tok"}})
//	fb.Script(
//		fakebird.Response{Status: 429, Header: map[string]string{"Retry-After": "1"}},
//		fakebird.Response{Status: 500},
//	)
//	// ... point the code under test at fb.URL() ...
//	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
//	defer cancel()
//	if err := fb.WaitRows(ctx, 3); err != nil {
//		t.Fatal(err)
//	}
//	rows := fb.RowsFor("events")
package fakebird
