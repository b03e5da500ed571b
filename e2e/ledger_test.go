package e2e

// The fault suite's bookkeeping, shared with the ClickHouse tests: a ledger
// of what bounded sets of concurrent clients sent and what the proxy
// answered, and the comparison of what it acknowledged with what reached
// upstream or a dead-letter file (see faults_test.go for the FAULT line).

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
)

// faultRSSLimit is a generous bound on the child's resident memory, race
// detector included: the buffers in these scenarios hold at most a few MB.
const faultRSSLimit = 200 << 20

// faultLoad describes one scenario's clients. Every client loop is bounded
// twice: by requests and by duration (or stop, whichever comes first).
type faultLoad struct {
	clients     int
	requests    int           // most requests per client
	lines       int           // events per request: 1..lines
	pad         int           // bytes of padding per event
	datasources []string      // picked at random per request
	token       string        // the client token
	duration    time.Duration // a client stops after this long
	gap         time.Duration // pause between a client's requests
	pause429    time.Duration // pause after a 429; 0 honours Retry-After
	stop        <-chan struct{}
	// refusable, when set, says which other answers are refusals the
	// scenario expects (the events are counted as refused, not as errors).
	refusable func(ds string, status int) bool
}

// ledger records what clients sent and what the proxy answered.
type ledger struct {
	t     *testing.T
	name  string
	start time.Time

	mu       sync.Mutex // protects every field below
	phase    string     // label for requests sent from now on
	closed   bool       // SIGTERM sent: 503 and connection refused are expected
	sent     int
	refused  int
	other    int            // events with an unexpected answer
	odd      map[string]int // unexpected answers: "status for ds: body" -> requests
	acked    []event
	unknown  map[event]bool
	byPhase  map[string]map[string]int // phase -> outcome -> requests
	phaseSeq []string
}

func newLedger(t *testing.T, name string) *ledger {
	l := &ledger{t: t, name: name, start: time.Now(), unknown: map[event]bool{}, odd: map[string]int{}, byPhase: map[string]map[string]int{}}
	l.setPhase("load")
	return l
}

// setPhase labels the requests sent from now on, e.g. "down" or "sigterm".
func (l *ledger) setPhase(p string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.phase = p
	if l.byPhase[p] == nil {
		l.byPhase[p] = map[string]int{}
		l.phaseSeq = append(l.phaseSeq, p)
	}
}

// sigterm marks that the proxy was told to stop, then signals it.
func (l *ledger) sigterm(p *child) {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.setPhase("after_sigterm")
	p.sigterm()
}

func (l *ledger) requests(phase, outcome string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byPhase[phase][outcome]
}

func (l *ledger) ackedEvents() []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.acked)
}

// send posts pr and records the outcome. It returns how long the client
// should pause before its next request, and whether it should stop.
func (l *ledger) send(client *http.Client, base string, pr post, ld faultLoad) (time.Duration, bool) {
	t := l.t
	l.mu.Lock()
	phase := l.phase
	l.mu.Unlock()
	r, err := pr.send(client, base)
	l.mu.Lock()
	closed := l.closed // after the answer: a request may start before SIGTERM and end after it
	l.mu.Unlock()

	outcome := strconv.Itoa(r.status)
	var pause time.Duration
	stop := false
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		outcome = "conn_refused"
		stop = true
		if !closed {
			t.Errorf("%s: POST to %s refused before SIGTERM: the proxy is gone (%v)", l.name, pr.ds, err)
		}
	case err != nil:
		outcome = "no_answer"
	case r.status == http.StatusAccepted:
		if want := fmt.Sprintf(`{"successful_rows":%d,"quarantined_rows":0}`, len(pr.lines)); string(r.body) != want {
			t.Errorf("%s: 202 body: got %q; want %q", l.name, r.body, want)
		}
	case r.status == http.StatusTooManyRequests:
		assertJSONError(t, r)
		secs, aerr := strconv.Atoi(r.header.Get("Retry-After"))
		if aerr != nil || secs < 1 {
			t.Errorf("%s: 429 Retry-After: got %q; want whole seconds >= 1", l.name, r.header.Get("Retry-After"))
			secs = 1
		}
		pause = time.Duration(min(secs, 5)) * time.Second
		if ld.pause429 > 0 {
			pause = ld.pause429
		}
	case r.status == http.StatusServiceUnavailable:
		assertJSONError(t, r)
		if !closed {
			t.Errorf("%s: got 503 %s before SIGTERM; want 202 or 429", l.name, r.body)
		}
		pause = 50 * time.Millisecond
	case ld.refusable != nil && ld.refusable(pr.ds, r.status):
		outcome = "refused_" + outcome
		pause = 50 * time.Millisecond
	default: // reported once per kind by tally
		outcome = "unexpected_" + outcome
		pause = 50 * time.Millisecond
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	l.byPhase[phase][outcome]++
	l.sent += len(pr.lines)
	for _, line := range pr.lines {
		e := event{pr.ds, line}
		switch outcome {
		case "202":
			l.acked = append(l.acked, e)
		case "no_answer":
			l.unknown[e] = true
		case "429", "503", "conn_refused":
			l.refused++
		default:
			if strings.HasPrefix(outcome, "refused_") {
				l.refused++
			} else {
				l.other++
			}
		}
	}
	if strings.HasPrefix(outcome, "unexpected_") {
		l.odd[fmt.Sprintf("%d for %s: %s", r.status, pr.ds, r.body)]++
	}
	return pause, stop
}

// drive starts ld's clients against base and returns a function that waits
// for them to finish. Events are unique: {"client":c,"seq":n,...}.
func (l *ledger) drive(base string, ld faultLoad) (wait func()) {
	client := newClient(true)
	deadline := time.Now().Add(ld.duration)
	pad := strings.Repeat("x", ld.pad)
	var wg sync.WaitGroup
	for c := range ld.clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 0xfa17))
			seq := 0
			for req := 0; req < ld.requests && time.Now().Before(deadline); req++ {
				pr := post{ds: ld.datasources[rng.IntN(len(ld.datasources))], token: ld.token, gzip: req%2 == 1}
				for range 1 + rng.IntN(ld.lines) {
					pr.lines = append(pr.lines, fmt.Sprintf(`{"client":%d,"seq":%d,"ds":%q,"s":"Zürich 東京","pad":%q}`, c, seq, pr.ds, pad))
					seq++
				}
				pause, stop := l.send(client, base, pr, ld)
				if stop {
					return
				}
				pause = max(pause, ld.gap)
				if pause <= 0 {
					continue
				}
				timer := time.NewTimer(min(pause, time.Until(deadline)))
				select {
				case <-timer.C:
				case <-ld.stop:
					timer.Stop()
					return
				}
			}
		})
	}
	return func() {
		wg.Wait()
		client.CloseIdleConnections()
	}
}

// figures is one scenario's outcome, as logged in the FAULT line.
type figures struct {
	sent, acked, refused, unknown, delivered, deadLettered, missing, duplicates int
}

// tally compares the acknowledged events with the rows upstream and the
// dead-lettered events, logs the FAULT line and fails the test for every
// acknowledged event found in neither place, for rows upstream under the
// wrong token, and for events found that were never acknowledged and whose
// request did not fail without an answer (refused requests must store
// nothing).
func (l *ledger) tally(rows []fakebird.Row, wantToken string, dead map[event]int) figures {
	t := l.t
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	up := map[event]int{}
	badToken := 0
	for _, r := range rows {
		up[event{r.Datasource, string(r.Line)}]++
		if r.Token != wantToken {
			badToken++
		}
	}
	f := figures{sent: l.sent, acked: len(l.acked), refused: l.refused, unknown: len(l.unknown)}
	var missing []string
	ackedSet := make(map[event]bool, len(l.acked))
	for _, e := range l.acked {
		ackedSet[e] = true
		nu, nd := up[e], dead[e]
		switch {
		case nu+nd == 0:
			f.missing++
			missing = append(missing, e.ds+" "+e.line)
			continue
		case nu > 0:
			f.delivered++
		default:
			f.deadLettered++
		}
		f.duplicates += nu + nd - 1
	}
	var phantoms []string
	for _, m := range []map[event]int{up, dead} {
		for e := range m {
			if !ackedSet[e] && !l.unknown[e] {
				phantoms = append(phantoms, e.ds+" "+e.line)
			}
		}
	}
	t.Logf("FAULT %s: sent=%d acked=%d refused=%d delivered=%d missing=%d duplicates=%d unknown=%d dead_lettered=%d took=%s",
		l.name, f.sent, f.acked, f.refused, f.delivered, f.missing, f.duplicates, f.unknown, f.deadLettered,
		time.Since(l.start).Round(10*time.Millisecond))
	var phases []string
	for _, p := range l.phaseSeq {
		var outs []string
		for _, o := range slices.Sorted(maps.Keys(l.byPhase[p])) {
			outs = append(outs, fmt.Sprintf("%s:%d", o, l.byPhase[p][o]))
		}
		phases = append(phases, p+"{"+strings.Join(outs, " ")+"}")
	}
	t.Logf("%s: requests by phase and outcome: %s", l.name, strings.Join(phases, " "))
	if f.missing > 0 {
		sort.Strings(missing)
		t.Errorf("%s: %d acknowledged events are neither upstream nor dead-lettered; first ones:\n%s",
			l.name, f.missing, strings.Join(missing[:min(len(missing), 5)], "\n"))
	}
	if len(phantoms) > 0 {
		t.Errorf("%s: %d events found that were refused or never sent; first ones:\n%s",
			l.name, len(phantoms), strings.Join(phantoms[:min(len(phantoms), 5)], "\n"))
	}
	if badToken > 0 {
		t.Errorf("%s: %d rows reached upstream with a token other than the one configured", l.name, badToken)
	}
	if l.other > 0 {
		var kinds []string
		for _, k := range slices.Sorted(maps.Keys(l.odd)) {
			kinds = append(kinds, fmt.Sprintf("%d requests: %s", l.odd[k], k))
		}
		t.Errorf("%s: %d events were refused with an answer the scenario does not expect (want 202, 429, or 503 after SIGTERM):\n%s",
			l.name, l.other, strings.Join(kinds, "\n"))
	}
	return f
}

// upstreamRows counts fakebird's rows by event.
func upstreamRows(fb *fakebird.Server) map[event]int {
	m := map[event]int{}
	for _, r := range fb.Rows() {
		m[event{r.Datasource, string(r.Line)}]++
	}
	return m
}

// upstreamAndDead counts fakebird's rows and the dead-lettered events in
// dir together, by event: where an acknowledged event may have ended up.
func upstreamAndDead(t *testing.T, fb *fakebird.Server, dir string) map[event]int {
	m := upstreamRows(fb)
	for e, n := range readDeadLetters(t, dir, false) {
		m[e] += n
	}
	return m
}

// settle waits until every acknowledged event is in found(), or ctx ends,
// or the proxy is idle (holding no events, nothing found for idle) while
// some are still missing: then waiting longer cannot help, and the error
// says so at once rather than at the deadline. It wakes on every upstream
// request and at least every 250ms.
func settle(ctx context.Context, fb *fakebird.Server, p *child, l *ledger, found func() map[event]int, idle time.Duration) error {
	acked := l.ackedEvents()
	last, since := -1, time.Now()
	for range 10_000 { // 250ms each at most: far beyond any ctx used here
		n := fb.RequestCount()
		have := found()
		missing := 0
		for _, e := range acked {
			if have[e] == 0 {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if missing != last {
			last, since = missing, time.Now()
		} else if time.Since(since) >= idle {
			if held, err := metric(p, "tbproxy_buffer_events"); err == nil && held == 0 {
				return fmt.Errorf("%d acknowledged events are neither upstream nor dead-lettered, and the proxy has held none for %v: they were dropped", missing, idle)
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		_ = fb.WaitRequests(wctx, n+1) // a new request, or time to look again
		cancel()
		if ctx.Err() != nil {
			return fmt.Errorf("%d acknowledged events still neither upstream nor dead-lettered: %w", missing, context.Cause(ctx))
		}
	}
	return errors.New("settle: gave up after 10,000 rounds")
}

// childStats is what watchChild saw.
type childStats struct {
	samples                   int
	maxHeld                   float64
	firstRSS, maxRSS, lastRSS int64
}

// watchChild samples the child's tbproxy_buffer_events and its RSS every
// interval (at most 600 times) until the returned function is called, which
// returns what it saw. A sample above maxEvents or faultRSSLimit fails t.
func watchChild(t *testing.T, name string, p *child, every time.Duration, maxEvents int) (stop func() childStats) {
	var st childStats
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		overHeld, overRSS := 0, 0
		for range 600 {
			held, err := metric(p, "tbproxy_buffer_events")
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			st.samples++
			st.maxHeld = max(st.maxHeld, held)
			if held > float64(maxEvents) {
				if overHeld++; overHeld == 1 {
					t.Errorf("%s: tbproxy_buffer_events: got %v; want at most BUFFER_SIZE=%d", name, held, maxEvents)
				}
			}
			if runtime.GOOS == "linux" {
				r, err := procStatusBytes(p.cmd.Process.Pid, "VmRSS")
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				if st.firstRSS == 0 {
					st.firstRSS = r
				}
				st.lastRSS, st.maxRSS = r, max(st.maxRSS, r)
				if r > faultRSSLimit {
					if overRSS++; overRSS == 1 {
						t.Errorf("%s: proxy RSS: got %d MiB; want below %d MiB", name, r>>20, faultRSSLimit>>20)
					}
				}
			}
			select {
			case <-quit:
				return
			case <-time.After(every):
			}
		}
	}()
	return func() childStats {
		close(quit)
		<-done
		t.Logf("%s: %d samples: buffer_events max %v (limit %d); RSS first %d MiB, max %d MiB, last %d MiB (limit %d MiB)",
			name, st.samples, st.maxHeld, maxEvents, st.firstRSS>>20, st.maxRSS>>20, st.lastRSS>>20, faultRSSLimit>>20)
		return st
	}
}

// readDeadLetters reads every <ds>.ndjson in dir into events. Only complete
// lines count; with final set, an incomplete last line fails t.
func readDeadLetters(t *testing.T, dir string, final bool) map[event]int {
	m := map[event]int{}
	files, _ := filepath.Glob(filepath.Join(dir, "*.ndjson"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Errorf("dead letters: %v", err)
			continue
		}
		ds := strings.TrimSuffix(filepath.Base(f), ".ndjson")
		if i := bytes.LastIndexByte(b, '\n'); i+1 < len(b) {
			if final {
				t.Errorf("%s: got %q after the last newline; want every row to end in \\n", f, b[i+1:])
			}
			b = b[:i+1]
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if line != "" {
				m[event{ds, line}]++
			}
		}
	}
	return m
}

// checkDeadLetterLog checks <dir>/<ds>.errors.jsonl against <dir>/<ds>.ndjson:
// one JSON line per dropped batch with time, datasource, reason (wantReason,
// or any when it is ""), status, error, rows, bytes and offset, where offset
// and bytes locate the batch's rows (rows of them, each ending in \n) in the
// .ndjson file, and the batches together tile it. It returns how many
// batches were logged.
func checkDeadLetterLog(t *testing.T, dir, ds, wantReason string, wantStatus int) int {
	t.Helper()
	logPath, dataPath := filepath.Join(dir, ds+".errors.jsonl"), filepath.Join(dir, ds+".ndjson")
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Errorf("dead-letter log: %v; want one JSON line per dropped batch", err)
		return 0
	}
	data, err := os.ReadFile(dataPath)
	if err != nil {
		t.Errorf("dead letters: %v", err)
		return 0
	}
	type record struct {
		line                string
		offset, bytes, rows int64
	}
	var recs []record
	for i, line := range strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n") {
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(line))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Errorf("%s line %d: got %q; want a JSON object (%v)", logPath, i+1, line, err)
			continue
		}
		str := func(k string) string { s, _ := m[k].(string); return s }
		num := func(k string) (int64, bool) {
			n, ok := m[k].(json.Number)
			if !ok {
				return 0, false
			}
			v, err := n.Int64()
			return v, err == nil
		}
		if _, err := time.Parse(time.RFC3339Nano, str("time")); err != nil {
			t.Errorf("%s line %d: got time %v; want an RFC 3339 time", logPath, i+1, m["time"])
		}
		if got := str("datasource"); got != ds {
			t.Errorf("%s line %d: got datasource %q; want %q", logPath, i+1, got, ds)
		}
		if got := str("reason"); got == "" || (wantReason != "" && got != wantReason) {
			t.Errorf("%s line %d: got reason %q; want %q", logPath, i+1, got, cmp.Or(wantReason, "a reason"))
		}
		if got, _ := num("status"); got != int64(wantStatus) {
			t.Errorf("%s line %d: got status %v; want %d", logPath, i+1, m["status"], wantStatus)
		}
		if str("error") == "" {
			t.Errorf("%s line %d: got error %v; want the upstream's error text", logPath, i+1, m["error"])
		}
		r := record{line: line}
		var okR, okB, okO bool
		r.rows, okR = num("rows")
		r.bytes, okB = num("bytes")
		r.offset, okO = num("offset")
		if !okR || !okB || !okO || r.rows < 1 || r.bytes < 1 || r.offset < 0 {
			t.Errorf("%s line %d: got rows %v, bytes %v, offset %v; want whole numbers, rows and bytes >= 1, offset >= 0",
				logPath, i+1, m["rows"], m["bytes"], m["offset"])
			continue
		}
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].offset < recs[j].offset })
	var at int64
	for _, r := range recs {
		if r.offset != at || r.offset+r.bytes > int64(len(data)) {
			t.Errorf("%s: record %s: got offset %d, bytes %d; want offset %d (records tile %s, %d bytes)",
				logPath, r.line, r.offset, r.bytes, at, dataPath, len(data))
			return len(recs)
		}
		chunk := data[r.offset : r.offset+r.bytes]
		if n := int64(bytes.Count(chunk, []byte{'\n'})); n != r.rows || chunk[len(chunk)-1] != '\n' {
			t.Errorf("%s: record %s: bytes %d..%d of %s hold %d lines; want rows=%d whole lines",
				logPath, r.line, r.offset, r.offset+r.bytes, dataPath, n, r.rows)
		}
		at = r.offset + r.bytes
	}
	if at != int64(len(data)) {
		t.Errorf("%s: records cover %d of the %d bytes of %s; want all", logPath, at, len(data), dataPath)
	}
	return len(recs)
}

// finish stops the child with SIGTERM (unless already sent) and checks it
// exits with status 0 within d.
func finish(t *testing.T, l *ledger, p *child, d time.Duration) {
	t.Helper()
	l.mu.Lock()
	sent := l.closed
	l.mu.Unlock()
	start := time.Now()
	if !sent {
		l.sigterm(p)
	}
	got := p.exitStatus(d)
	t.Logf("%s: exit status %d, %v after SIGTERM", l.name, got, time.Since(start).Round(10*time.Millisecond))
	if got != 0 {
		t.Errorf("%s: got exit status %d; want 0", l.name, got)
	}
	assertNoSecrets(t, p.stderr.String(), upstreamToken, clientToken)
}
