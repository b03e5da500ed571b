package e2e

// End-to-end tests of the ClickHouse upstream: the built proxy (TestMain)
// writes into a real clickhouse-server that each test starts on its own
// loopback port (internal/chtest; Debian's 18.16 in CI). Every test logs
//
//	CLICKHOUSE <name>: requests=N acked=N rows=N inserts=N …
//
// with the figures a reader wants: client requests, rows acknowledged, rows
// found in ClickHouse and inserts that carried them.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/chtest"
	"github.com/tbproxy/tbproxy/internal/fakebird"
)

// chEnv is the proxy's environment for the ClickHouse database db: client
// tokens as in proxy-token mode, short intervals so tests take seconds.
func chEnv(srv *chtest.Server, db string, extra map[string]string) map[string]string {
	env := map[string]string{
		"TINYBIRD_BASE_URL":   srv.URL(db),
		"AUTHORIZATION_TOKEN": clientToken,
		"FLUSH_INTERVAL":      "300",
		"RETRY_MIN_BACKOFF":   "20ms",
		"RETRY_MAX_BACKOFF":   "500ms",
		"SHUTDOWN_TIMEOUT":    "30s",
	}
	maps.Copy(env, extra)
	return env
}

// chCount returns SELECT count() FROM table.
func chCount(t *testing.T, srv *chtest.Server, table string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(srv.MustQuery(t, "SELECT count() FROM "+table)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// chInserts counts the finished INSERTs into db that ClickHouse logged.
func chInserts(t *testing.T, srv *chtest.Server, db string) int {
	t.Helper()
	srv.MustQuery(t, "SYSTEM FLUSH LOGS")
	n, err := strconv.Atoi(strings.TrimSpace(srv.MustQuery(t,
		"SELECT count() FROM system.query_log WHERE toUInt8(type) = 2 AND query LIKE 'INSERT INTO `"+db+"`.%'")))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ledgerTable is the table for the fault suite's events (ledger.drive):
// {"client":C,"seq":N,"ds":"…","s":"Zürich 東京","pad":"…"}.
const ledgerTable = "(client UInt32, seq UInt32, ds String, s String, pad String) ENGINE = MergeTree() ORDER BY (client, seq)"

// ledgerRows reads back the ledger's events from the tables, rebuilding
// each line from its columns as drive wrote it, so tally can compare them
// with what was acknowledged, byte for byte.
func ledgerRows(t *testing.T, srv *chtest.Server, db string, tables ...string) []fakebird.Row {
	t.Helper()
	var rows []fakebird.Row
	for _, table := range tables {
		out := srv.MustQuery(t, "SELECT client, seq, ds, s, pad FROM `"+db+"`.`"+table+"` FORMAT JSONEachRow")
		dec := json.NewDecoder(strings.NewReader(out))
		for dec.More() {
			var r struct {
				Client, Seq int
				DS, S, Pad  string
			}
			if err := dec.Decode(&r); err != nil {
				t.Fatalf("%s: %v", table, err)
			}
			line := fmt.Sprintf(`{"client":%d,"seq":%d,"ds":%q,"s":"%s","pad":%q}`, r.Client, r.Seq, r.DS, r.S, r.Pad)
			rows = append(rows, fakebird.Row{Datasource: table, Line: []byte(line)})
		}
	}
	return rows
}

// TestClickHouseE2EDelivers: events posted by concurrent clients land in
// their tables exactly as acknowledged (64-bit integers beyond 2^53 and
// unicode included), wait=true answers once ClickHouse has the rows, and
// far fewer inserts than client requests carry them.
func TestClickHouseE2EDelivers(t *testing.T) {
	t.Parallel()
	srv := chtest.Start(t)
	srv.MustQuery(t, "CREATE DATABASE e2e")
	tables := []string{"page_views", "clicks"}
	for _, tb := range tables {
		srv.MustQuery(t, "CREATE TABLE e2e."+tb+" (client UInt32, seq UInt32, id UInt64, big Int64, s String, ts DateTime) "+
			"ENGINE = MergeTree() ORDER BY (client, seq)")
	}
	p := startProxy(t, chEnv(srv, "e2e", map[string]string{"FLUSH_INTERVAL": "500"}))

	// want maps table → "client/seq" → the columns as ClickHouse returns them.
	type cols struct{ id, big, s, ts string }
	want := map[string]map[string]cols{}
	const clients, perClient = 8, 300
	var (
		mu              sync.Mutex
		requests, acked int
		wg              sync.WaitGroup
	)
	client := newClient(true)
	for c := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 0xc11c))
			for seq, req := 0, 0; seq < perClient; req++ {
				ds := tables[rng.IntN(len(tables))]
				var lines []string
				batch := map[string]cols{}
				for range min(1+rng.IntN(10), perClient-seq) {
					id := uint64(1)<<63 + uint64(c)<<20 + uint64(seq) // above 2^53: a float64 would round it
					big := -(int64(1) << 62) - int64(seq)
					s := fmt.Sprintf("Zürich 東京 🎉 \"%d\" \\ / é\t%d", c, seq)
					sj, _ := json.Marshal(s)
					lines = append(lines, fmt.Sprintf(`{"ts":"2026-11-23T10:00:%02dZ","client":%d,"seq":%d,"id":%d,"big":%d,"s":%s,"unknown":{"nested":[1,2]}}`,
						seq%60, c, seq, id, big, sj))
					batch[fmt.Sprintf("%d/%d", c, seq)] = cols{strconv.FormatUint(id, 10), strconv.FormatInt(big, 10), s,
						strconv.Itoa(1795428000 + seq%60)}
					seq++
				}
				wait := req%8 == 0
				r, err := post{ds: ds, token: clientToken, wait: wait, lines: lines}.send(client, p.base)
				wantStatus, wantBody := http.StatusAccepted, fmt.Sprintf(`{"successful_rows":%d,"quarantined_rows":0}`, len(lines))
				if wait {
					wantStatus = http.StatusOK
				}
				if err != nil || r.status != wantStatus || string(r.body) != wantBody {
					t.Errorf("client %d (wait=%v): got %v %d %s; want %d %s", c, wait, err, r.status, r.body, wantStatus, wantBody)
					return
				}
				mu.Lock()
				requests++
				acked += len(lines)
				if want[ds] == nil {
					want[ds] = map[string]cols{}
				}
				maps.Copy(want[ds], batch)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Everything acknowledged is in ClickHouse within a few flushes.
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 0; attempt < 300 && time.Now().Before(deadline); attempt++ {
		if chCount(t, srv, "e2e.page_views")+chCount(t, srv, "e2e.clicks") >= acked {
			break
		}
		time.Sleep(100 * time.Millisecond) // ClickHouse has no change feed to wait on
	}
	metricInserts, err := metric(p, `tbproxy_upstream_requests_total{code="200"}`)
	if err != nil {
		t.Fatal(err)
	}
	p.sigterm()
	if got := p.exitStatus(30 * time.Second); got != 0 {
		t.Errorf("exit status: got %d; want 0", got)
	}
	assertNoSecrets(t, p.stderr.String(), chtest.Password, clientToken)

	arrived := 0
	for _, tb := range tables {
		out := srv.MustQuery(t, "SELECT client, seq, id, big, s, toUnixTimestamp(ts) AS ts FROM e2e."+tb+" FORMAT JSONEachRow")
		seen := map[string]int{}
		dec := json.NewDecoder(strings.NewReader(out))
		dec.UseNumber()
		for dec.More() {
			var r map[string]any
			if err := dec.Decode(&r); err != nil {
				t.Fatalf("%s: %v", tb, err)
			}
			str := func(k string) string { return fmt.Sprint(r[k]) } // 64-bit integers come quoted
			key := str("client") + "/" + str("seq")
			seen[key]++
			arrived++
			w, ok := want[tb][key]
			got := cols{str("id"), str("big"), str("s"), str("ts")}
			if !ok || got != w {
				t.Errorf("%s row %s: got %+v; want %+v (acknowledged: %v)", tb, key, got, w, ok)
			}
		}
		for key := range want[tb] {
			if seen[key] != 1 {
				t.Errorf("%s row %s: found %d times; want once", tb, key, seen[key])
			}
		}
	}
	inserts := chInserts(t, srv, "e2e")
	t.Logf("CLICKHOUSE delivers: requests=%d acked=%d rows_in_clickhouse=%d inserts=%d (query_log) %v (tbproxy_upstream_requests_total{code=\"200\"})",
		requests, acked, arrived, inserts, metricInserts)
	if arrived != acked {
		t.Errorf("rows in ClickHouse: got %d; want %d acknowledged", arrived, acked)
	}
	if inserts == 0 || inserts*5 > requests {
		t.Errorf("inserts: got %d for %d client requests; want at most a fifth as many", inserts, requests)
	}
	if int(metricInserts) != inserts {
		t.Errorf("inserts: the proxy counted %v, ClickHouse logged %d; want the same", metricInserts, inserts)
	}
}

// TestClickHouseE2EMissingTable: a datasource without a table is dead-
// lettered with a log line naming the table; the others keep flowing.
func TestClickHouseE2EMissingTable(t *testing.T) {
	t.Parallel()
	const name, absent = "missing_table", "absent"
	srv := chtest.Start(t)
	srv.MustQuery(t, "CREATE DATABASE e2e")
	srv.MustQuery(t, "CREATE TABLE e2e.present_a "+ledgerTable)
	srv.MustQuery(t, "CREATE TABLE e2e.present_b "+ledgerTable)
	dead := t.TempDir()
	p := startProxy(t, chEnv(srv, "e2e", map[string]string{"DEAD_LETTER_DIR": dead}))
	l := newLedger(t, name)
	l.drive(p.base, faultLoad{clients: 6, requests: 60, lines: 8, pad: 10, token: clientToken,
		datasources: []string{"present_a", absent, "present_b"}, duration: 10 * time.Second, gap: 5 * time.Millisecond})()

	// A client that waits hears why.
	r, err := post{ds: absent, token: clientToken, wait: true, lines: []string{`{"client":99,"seq":0}`}}.send(newClient(false), p.base)
	if err != nil || r.status != http.StatusNotFound || !strings.Contains(string(r.body), "table `e2e`.`absent` does not exist") {
		t.Errorf("wait=true to the missing table: got %v %d %s; want 404 naming the table", err, r.status, r.body)
	}
	l.mu.Lock()
	l.unknown[event{absent, `{"client":99,"seq":0}`}] = true // dead-lettered, never acknowledged
	l.mu.Unlock()
	finish(t, l, p, 40*time.Second)

	f := l.tally(ledgerRows(t, srv, "e2e", "present_a", "present_b"), "", readDeadLetters(t, dead, true))
	batches := checkDeadLetterLog(t, dead, absent, "upstream_rejected", http.StatusNotFound)
	for e := range readDeadLetters(t, dead, true) {
		if e.ds != absent {
			t.Errorf("a row of %s was dead-lettered; want only %s's", e.ds, absent)
			break
		}
	}
	if !strings.Contains(p.stderr.String(), "ClickHouse table `e2e`.`absent` does not exist") {
		t.Errorf("stderr: want a log line naming the missing table `e2e`.`absent`")
	}
	t.Logf("CLICKHOUSE %s: acked=%d in_clickhouse=%d dead_lettered=%d in %d batches", name, f.acked, f.delivered, f.deadLettered, batches)
	if f.delivered == 0 || f.deadLettered == 0 {
		t.Errorf("got %d delivered and %d dead-lettered; want some of each", f.delivered, f.deadLettered)
	}
}

// TestClickHouseE2EServerRestart: ClickHouse is killed under load and comes
// back on the same port 3 seconds later; every acknowledged event arrives.
func TestClickHouseE2EServerRestart(t *testing.T) {
	t.Parallel()
	const name = "clickhouse_restart"
	srv := chtest.Start(t)
	srv.MustQuery(t, "CREATE DATABASE e2e")
	srv.MustQuery(t, "CREATE TABLE e2e.restart_a "+ledgerTable)
	srv.MustQuery(t, "CREATE TABLE e2e.restart_b "+ledgerTable)
	p := startProxy(t, chEnv(srv, "e2e", map[string]string{"FLUSH_INTERVAL": "100"}))
	l := newLedger(t, name)
	wait := l.drive(p.base, faultLoad{clients: 6, requests: 100_000, lines: 8, pad: 20, token: clientToken,
		datasources: []string{"restart_a", "restart_b"}, duration: 9 * time.Second, gap: 5 * time.Millisecond})

	time.Sleep(2 * time.Second) // load with a healthy server first
	l.setPhase("down")
	srv.Kill()
	time.Sleep(3 * time.Second) // the outage
	srv.Restart(t)
	l.setPhase("up")
	wait()
	retries, err := metric(p, "tbproxy_upstream_retries_total")
	if err != nil {
		t.Fatal(err)
	}
	finish(t, l, p, 60*time.Second)
	assertNoSecrets(t, p.stderr.String(), chtest.Password)

	f := l.tally(ledgerRows(t, srv, "e2e", "restart_a", "restart_b"), "", nil)
	inserts := chInserts(t, srv, "e2e") // query_log restarts empty after the kill: inserts since
	t.Logf("CLICKHOUSE %s: requests_while_down=%d acked=%d in_clickhouse=%d missing=%d duplicates=%d retries=%v inserts_after_restart=%d",
		name, l.requests("down", "202"), f.acked, f.delivered, f.missing, f.duplicates, retries, inserts)
	if retries == 0 || l.requests("down", "202") == 0 {
		t.Errorf("got %v retries and %d requests acknowledged while ClickHouse was down; want some of both, or the outage was not exercised",
			retries, l.requests("down", "202"))
	}
}

// TestClickHouseE2EQuarantine: a row of the wrong type is skipped and
// counted as quarantined when CLICKHOUSE_ALLOW_ERRORS_RATIO allows it, and
// fails (dead-lettered with its whole batch) when it does not.
func TestClickHouseE2EQuarantine(t *testing.T) {
	t.Parallel()
	srv := chtest.Start(t)
	srv.MustQuery(t, "CREATE DATABASE e2e")
	srv.MustQuery(t, "CREATE TABLE e2e.typed (id UInt64, s String) ENGINE = MergeTree() ORDER BY id")
	// The bad row comes first: ClickHouse judges its ratio on the rows read
	// so far, and the proxy makes it judge the whole batch.
	lines := func(base int) []string {
		return []string{
			fmt.Sprintf(`{"id":"not a number","s":"bad %d"}`, base),
			fmt.Sprintf(`{"id":%d,"s":"a"}`, base+1),
			fmt.Sprintf(`{"id":%d,"s":"b"}`, base+2),
			fmt.Sprintf(`{"id":%d,"s":"c"}`, base+3),
		}
	}

	t.Run("allowed", func(t *testing.T) {
		p := startProxy(t, chEnv(srv, "e2e", map[string]string{"CLICKHOUSE_ALLOW_ERRORS_RATIO": "0.3", "FLUSH_INTERVAL": "100"}))
		r, err := post{ds: "typed", token: clientToken, wait: true, lines: lines(100)}.send(newClient(false), p.base)
		if want := `{"successful_rows":3,"quarantined_rows":1}`; err != nil || r.status != http.StatusOK || string(r.body) != want {
			t.Errorf("wait=true: got %v %d %s; want 200 %s", err, r.status, r.body, want)
		}
		q, err := metric(p, "tbproxy_quarantined_events_total")
		if err != nil || q != 1 {
			t.Errorf("tbproxy_quarantined_events_total: got %v, %v; want 1", q, err)
		}
		if got := srv.MustQuery(t, "SELECT id FROM e2e.typed WHERE id BETWEEN 100 AND 199 ORDER BY id"); got != "101\n102\n103\n" {
			t.Errorf("rows: got %q; want the 3 good ones", got)
		}
		p.sigterm()
		if got := p.exitStatus(30 * time.Second); got != 0 {
			t.Errorf("exit status: got %d; want 0", got)
		}
		t.Logf("CLICKHOUSE quarantine allowed: sent=4 in_clickhouse=3 quarantined=%v", q)
	})

	t.Run("refused", func(t *testing.T) {
		dead := t.TempDir()
		p := startProxy(t, chEnv(srv, "e2e", map[string]string{"DEAD_LETTER_DIR": dead, "FLUSH_INTERVAL": "100"}))
		sent := lines(200)
		r, err := post{ds: "typed", token: clientToken, wait: true, lines: sent}.send(newClient(false), p.base)
		if err != nil || r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "cannot parse") {
			t.Errorf("wait=true: got %v %d %s; want 400 saying ClickHouse cannot parse the rows", err, r.status, r.body)
		}
		p.sigterm()
		if got := p.exitStatus(30 * time.Second); got != 0 {
			t.Errorf("exit status: got %d; want 0", got)
		}
		if n := chCount(t, srv, "e2e.typed WHERE id BETWEEN 200 AND 299"); n != 0 {
			t.Errorf("rows in ClickHouse: got %d; want 0, the batch is refused whole", n)
		}
		dl := readDeadLetters(t, dead, true)
		for _, line := range sent {
			if dl[event{"typed", line}] != 1 {
				t.Errorf("dead letters: got %q %d times; want once", line, dl[event{"typed", line}])
			}
		}
		checkDeadLetterLog(t, dead, "typed", "upstream_rejected", http.StatusBadRequest)
		if !bytes.Contains([]byte(p.stderr.String()), []byte("batch dropped")) {
			t.Errorf("stderr: want a \"batch dropped\" line")
		}
		t.Logf("CLICKHOUSE quarantine refused: sent=4 in_clickhouse=0 dead_lettered=%d", len(dl))
	})
}

// TestClickHouseE2EConfig: a ClickHouse URL needs client tokens (or an
// explicit open proxy) and no TINYBIRD_TOKEN, and never passes the rest of
// the API through.
func TestClickHouseE2EConfig(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"TINYBIRD_BASE_URL": "clickhouse://127.0.0.1:1/db"}, "AUTHORIZATION_TOKEN: required with a clickhouse://"},
		{map[string]string{"TINYBIRD_BASE_URL": "clickhouse://u:" + chtest.Password + "@127.0.0.1:1/db", "AUTHORIZATION_TOKEN": "x", "TINYBIRD_TOKEN": upstreamToken},
			"TINYBIRD_TOKEN: is not used with a clickhouse://"},
	} {
		cmd, stderr := command(t, tt.env)
		err := cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("got exit %d (%v), stderr %q; want 2 and %q", code, err, stderr, tt.want)
		}
		assertNoSecrets(t, stderr.String(), chtest.Password, upstreamToken)
	}

	// Open proxy: starts (ClickHouse need not be up), and the rest of the
	// API is a 404, not a forward.
	p := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": "clickhouse://127.0.0.1:1/db", "ALLOW_UNAUTHENTICATED": "true"})
	resp, err := newClient(false).Get(p.base + "/v0/pipes/top.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /v0/pipes/top.json: got %d; want 404 (nothing to pass through to)", resp.StatusCode)
	}
	if !strings.Contains(p.stderr.String(), "write events into ClickHouse") {
		t.Errorf("stderr: want the open-proxy warning")
	}
	// Without a client token it is still accepted (open), and a token is
	// never needed upstream.
	r, err := (post{ds: "anything", lines: []string{`{}`}}).send(newClient(false), p.base)
	if err != nil || r.status != http.StatusAccepted {
		t.Errorf("open proxy POST: got %v %d %s; want 202", err, r.status, r.body)
	}
}
