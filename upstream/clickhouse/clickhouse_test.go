package clickhouse

import (
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/upstream"
)

// chBatch returns a batch of lines for ds, first accepted at accepted.
func chBatch(ds string, accepted int64, lines ...string) *upstream.Batch {
	data := strings.Join(lines, "\n") + "\n"
	return &upstream.Batch{Key: buffer.Key{Datasource: ds}, Rows: len(lines), Bytes: len(data), First: accepted, Parts: [][]byte{[]byte(data)}}
}

func TestParseException(t *testing.T) {
	t.Parallel()
	f := func(status int, code, body string, wantCode int, wantName, wantText string) {
		t.Helper()
		e := parseException(status, func(k string) string {
			if k == "X-ClickHouse-Exception-Code" {
				return code
			}
			return ""
		}, []byte(body))
		if e.code != wantCode || e.name != wantName || e.text != wantText {
			t.Errorf("parseException(%d, %q): got code %d name %q text %q; want %d %q %q",
				status, body, e.code, e.name, e.text, wantCode, wantName, wantText)
		}
	}
	// ClickHouse 18.16, as captured from the server.
	f(404, "", "Code: 60, e.displayText() = DB::Exception: Table analytics.nope doesn't exist., e.what() = DB::Exception\n",
		60, "UNKNOWN_TABLE", "Table analytics.nope doesn't exist.")
	f(401, "", "Code: 193, e.displayText() = DB::Exception: Wrong password for user tb, e.what() = DB::Exception\n",
		193, "WRONG_PASSWORD", "Wrong password for user tb")
	f(500, "", "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected \" before: abc\": (at row 1)\n, e.what() = DB::Exception\n",
		27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "Cannot parse input: expected \" before: abc\": (at row 1)")
	// The format of 21.x and later, code also in a header.
	f(404, "60", "Code: 60. DB::Exception: Table analytics.nope does not exist. (UNKNOWN_TABLE) (version 23.8.1.1)\n",
		60, "UNKNOWN_TABLE", "Table analytics.nope does not exist.")
	f(500, "252", "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS) (version 24.3.2.23 (official build))",
		252, "TOO_MANY_PARTS", "Too many parts (300). Merges are processing significantly slower than inserts.")
	f(400, "", "Code: 1234. DB::Exception: something new (CANNOT_PARSE_WHATEVER) (version 25.1.1.1)",
		1234, "CANNOT_PARSE_WHATEVER", "something new")
	// Codes with the digits 0 and 9, names starting with A and Z and holding digits.
	f(500, "", "Code: 209, e.displayText() = DB::NetException: Timeout exceeded while reading from socket, e.what() = DB::NetException",
		209, "SOCKET_TIMEOUT", "Timeout exceeded while reading from socket")
	f(500, "", "Code: 90. DB::Exception: gone (ABORTED) (version 24.1.1.1)", 90, "ABORTED", "gone")
	f(500, "", "Code: 999. DB::Exception: keeper (ZK_SESSION_9) (version 24.1.1.1)", 999, "ZK_SESSION_9", "keeper")
	// A parenthesis that is no code name stays in the text.
	f(500, "", "Code: 252. DB::Exception: Too many parts (300) (version 24.1.1.1)", 252, "TOO_MANY_PARTS", "Too many parts (300)")
	f(500, "", "Code: 1. DB::Exception: odd (aB) (version 24.1.1.1)", 1, "", "odd (aB)")
	// A header code wins; a zero or junk one does not.
	f(500, "241", "Code: 1. DB::Exception: x (version 24.1.1.1)", 241, "MEMORY_LIMIT_EXCEEDED", "x")
	f(500, "0", "Code: 60. DB::Exception: x (version 24.1.1.1)", 60, "UNKNOWN_TABLE", "x")
	// A long message is cut at upstream.MaxErrorText; one of exactly that length is not.
	long := strings.Repeat("y", upstream.MaxErrorText+10)
	f(500, "", "Code: 1. DB::Exception: "+long+" (version 24.1.1.1)", 1, "", long[:upstream.MaxErrorText]+"…")
	f(500, "", "Code: 1. DB::Exception: "+long[:upstream.MaxErrorText]+" (version 24.1.1.1)", 1, "", long[:upstream.MaxErrorText])
	// Cut short: a code and nothing after it, or nothing before the version.
	f(500, "", "Code: 60", 60, "UNKNOWN_TABLE", "Code: 60")
	f(500, "", "Code: 1. DB::Exception:  (version 24.1.1.1)", 1, "", "(empty body)")
	f(500, "", "Code: 1. DB::Exception:  (E0_X)", 1, "E0_X", "(empty body)")
	// Not ClickHouse: a proxy in front of it.
	f(502, "", "<html>bad gateway</html>", 0, "", "<html>bad gateway</html>")
	f(503, "", "", 0, "", "(empty body)")
}

func TestClickHouseRefusal(t *testing.T) {
	t.Parallel()
	c, err := New(Options{Addr: "127.0.0.1:1", User: "writer", Password: "pw-SECRET", Database: "analytics"})
	if err != nil {
		t.Fatal(err)
	}
	const table = "`analytics`.`page_views`"
	for _, tt := range []struct {
		name       string
		status     int
		body       string
		wantRetry  bool
		wantStatus int    // upstream.StatusError's, for final refusals
		wantIn     string // in the message
	}{
		{"unknown table", 404, "Code: 60, e.displayText() = DB::Exception: Table analytics.page_views doesn't exist., e.what() = DB::Exception", false, 404, "table `analytics`.`page_views` does not exist"},
		{"unknown database", 404, "Code: 81, e.displayText() = DB::Exception: Database analytics doesn't exist, e.what() = DB::Exception", false, 404, "database `analytics` does not exist"},
		{"wrong password", 401, "Code: 193, e.displayText() = DB::Exception: Wrong password for user writer, e.what() = DB::Exception", false, 403, `refused user "writer"`},
		{"unknown user", 401, "Code: 192, e.displayText() = DB::Exception: Unknown user writer, e.what() = DB::Exception", false, 403, "UNKNOWN_USER"},
		{"authentication failed", 516, "Code: 516. DB::Exception: writer: Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED) (version 23.8.1.1)", false, 403, "AUTHENTICATION_FAILED"},
		{"readonly", 500, "Code: 164, e.displayText() = DB::Exception: Cannot execute query in readonly mode, e.what() = DB::Exception", false, 403, "READONLY"},
		{"parse error 27", 500, "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected \" before: abc, e.what() = DB::Exception", false, 400, "cannot parse the rows for " + table},
		{"parse error 26", 500, "Code: 26, e.displayText() = DB::Exception: Cannot parse quoted string, e.what() = DB::Exception", false, 400, "CANNOT_PARSE_QUOTED_STRING"},
		{"parse error 6", 400, "Code: 6. DB::Exception: Cannot parse string 'x' as UInt64. (CANNOT_PARSE_TEXT) (version 23.8.1.1)", false, 400, "CANNOT_PARSE_TEXT"},
		{"incorrect data 117", 500, "Code: 117, e.displayText() = DB::Exception: Unknown field found while parsing JSONEachRow format: x, e.what() = DB::Exception", false, 400, "INCORRECT_DATA"},
		{"too many parts", 500, "Code: 252, e.displayText() = DB::Exception: Too many parts (300), e.what() = DB::Exception", true, 0, "TOO_MANY_PARTS"},
		{"memory limit", 500, "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED) (version 23.8.1.1)", true, 0, "MEMORY_LIMIT_EXCEEDED"},
		{"timeout 159", 500, "Code: 159, e.displayText() = DB::Exception: Timeout exceeded, e.what() = DB::Exception", true, 0, "TIMEOUT_EXCEEDED"},
		{"socket timeout 209", 500, "Code: 209, e.displayText() = DB::NetException: Timeout exceeded while reading from socket, e.what() = DB::NetException", true, 0, "SOCKET_TIMEOUT"},
		{"unknown setting", 404, "Code: 115, e.displayText() = DB::Exception: Unknown setting insert_deduplication_token, e.what() = DB::Exception", true, 0, "detecting the server's settings again"},
		{"other 5xx code", 500, "Code: 999999. DB::Exception: who knows (SOMETHING) (version 30.1)", true, 0, "who knows"},
		{"other 4xx code", 400, "Code: 999998. DB::Exception: refused (SOMETHING_ELSE) (version 30.1)", false, 400, "refused to insert 10 rows into " + table},
		{"view fails after the table was written", 500, "Code: 153, e.displayText() = DB::Exception: Division by zero: while pushing to view analytics.mv, e.what() = DB::Exception", false, 422, "materialized view failed"},
		{"view fails to parse", 500, "Code: 38, e.displayText() = DB::Exception: Cannot parse date: value 2 before: x: while pushing to view analytics.mv, e.what() = DB::Exception", false, 422, "may hold them"},
		{"logical error on a bad value (18.16)", 500, "Code: 49, e.displayText() = DB::Exception: Bad cast from type DB::ColumnString before: secret, e.what() = DB::Exception", false, 400, "LOGICAL_ERROR"},
		{"array from text", 500, "Code: 130, e.displayText() = DB::Exception: Array does not start with '[' character before: secret, e.what() = DB::Exception", false, 400, "CANNOT_READ_ARRAY_FROM_TEXT"},
		{"uuid", 500, "Code: 376, e.displayText() = DB::Exception: Cannot parse uuid before: secret, e.what() = DB::Exception", false, 400, "CANNOT_PARSE_UUID"},
		{"proxy 502", 502, "bad gateway", true, 0, "bad gateway"},
		{"proxy 429", 429, "slow down", true, 0, "slow down"},
		{"proxy 403", 403, "forbidden", false, 403, "forbidden"},
		// The fallback is HTTP's rule with ClickHouse's reading of the body:
		// a JSON "error" field means nothing here (as it does to Tinybird).
		{"proxy 400 with a JSON body", 400, `{"error":"nope"}`, false, 400, `{"error":"nope"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := c.refusal(parseException(tt.status, func(string) string { return "" }, []byte(tt.body)), table, 10)
			_, retry := upstream.Retryable(err)
			if retry != tt.wantRetry {
				t.Errorf("retryable: got %v; want %v (%v)", retry, tt.wantRetry, err)
			}
			var se *upstream.StatusError
			if !tt.wantRetry {
				if !errors.As(err, &se) || se.Status != tt.wantStatus {
					t.Errorf("got %#v; want a *upstream.StatusError with status %d", err, tt.wantStatus)
				} else if tt.body != "forbidden" && strings.Contains(se.Message, "before:") {
					t.Errorf("client message %q quotes the rows", se.Message)
				}
			}
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("error %q: want it to contain %q", err, tt.wantIn)
			}
			if strings.Contains(err.Error(), "pw-SECRET") {
				t.Errorf("error %q contains the password", err)
			}
			// A proxy's 5xx in front of ClickHouse (a restart behind a load
			// balancer) is retried until it answers, not dropped after a few.
			var re *upstream.RetryableError
			if tt.name == "proxy 502" && (!errors.As(err, &re) || re.MaxAttempts != 0) {
				t.Errorf("proxy 502: got %#v; want a RetryableError with no bound on attempts", err)
			}
		})
	}
}

func TestQuoteIdent(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"page_views": "`page_views`",
		"a`b":        "`a\\`b`",
		`a\b`:        "`a\\\\b`",
	} {
		if got := quoteIdent(in); got != want {
			t.Errorf("quoteIdent(%q): got %s; want %s", in, got, want)
		}
	}
	if got, want := quoteString(`it's \`), `'it\'s \\'`; got != want {
		t.Errorf("quoteString: got %s; want %s", got, want)
	}
}

func TestSummaryWritten(t *testing.T) {
	t.Parallel()
	f := func(h string, want int, wantOK bool) {
		t.Helper()
		if got, ok := summaryWritten([]byte(h)); got != want || ok != wantOK {
			t.Errorf("summaryWritten(%q): got %d, %v; want %d, %v", h, got, ok, want, wantOK)
		}
	}
	f(`{"read_rows":"0","read_bytes":"0","written_rows":"98","written_bytes":"1234","total_rows_to_read":"0"}`, 98, true)
	f(`{"written_rows":7}`, 7, true)
	f(``, 0, false)
	f(`{"read_rows":"3"}`, 0, false)
	f(`not json`, 0, false)
}

func TestNewChecks(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{
		{Database: "x"},
		{Addr: "h:1"},
		{Addr: "h:1", Database: "x", AllowErrorsRatio: 1.5},
		{Addr: "h:1", Database: "x", AllowErrorsRatio: -0.1},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v): got nil error; want one", o)
		}
	}
	// The ends of the ratio are valid, and unset limits get their defaults.
	for _, ratio := range []float64{0, 1} {
		c, err := New(Options{Addr: "h:1", Database: "x", AllowErrorsRatio: ratio})
		if err != nil {
			t.Fatalf("ratio %g: %v", ratio, err)
		}
		if c.opts.Timeout != 30*time.Second || c.opts.MaxConns != 16 || c.opts.User != "default" {
			t.Errorf("defaults: timeout %s, %d connections, user %q; want 30s, 16, default", c.opts.Timeout, c.opts.MaxConns, c.opts.User)
		}
	}
}

// fakeCH is a scripted stand-in for ClickHouse's HTTP interface, for what a
// real 18.16 server cannot show: newer servers' summary header and
// deduplication setting, and chosen failures.
type fakeCH struct {
	t      *testing.T
	answer func(n int) (status int, header map[string]string, body string) // n: 1-based insert number

	mu       sync.Mutex // protects the fields below: the handler runs on the server's goroutines
	settings string     // the detection query's answer
	detects  int
	inserts  []fakeInsert
}

// seen returns how many detections and which inserts the fake has served.
func (f *fakeCH) seen() (int, []fakeInsert) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.detects, append([]fakeInsert(nil), f.inserts...)
}

type fakeInsert struct {
	params   map[string]string
	body     string
	auth     string
	encoding string
}

func (f *fakeCH) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !strings.HasPrefix(q.Get("query"), "INSERT") {
		sql, _ := io.ReadAll(r.Body)
		if !strings.Contains(string(sql), "system.settings") { // e.g. the query_log lookup
			http.Error(w, "Code: 62. DB::Exception: unexpected query in fake (SYNTAX_ERROR)", 400)
			return
		}
		f.mu.Lock()
		f.detects++
		settings := f.settings
		f.mu.Unlock()
		io.WriteString(w, settings)
		return
	}
	zr, err := gzip.NewReader(r.Body)
	if err != nil {
		f.t.Errorf("insert body is not gzip: %v", err)
		return
	}
	body, _ := io.ReadAll(zr)
	in := fakeInsert{params: map[string]string{}, body: string(body), auth: r.Header.Get("Authorization"), encoding: r.Header.Get("Content-Encoding")}
	for k := range q {
		in.params[k] = q.Get(k)
	}
	f.mu.Lock()
	f.inserts = append(f.inserts, in)
	n := len(f.inserts)
	f.mu.Unlock()
	status, header, text := 200, map[string]string(nil), ""
	if f.answer != nil {
		status, header, text = f.answer(n)
	}
	for k, v := range header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(status)
	io.WriteString(w, text)
}

func newFakeCH(t *testing.T, settings string, answer func(int) (int, map[string]string, string)) (*fakeCH, *Client) {
	t.Helper()
	f := &fakeCH{t: t, settings: settings, answer: answer}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := New(Options{Addr: strings.TrimPrefix(srv.URL, "http://"), User: "writer",
		Password: "pw", Database: "analytics", AllowErrorsRatio: 0.5, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

const newServerSettings = "insert_deduplication_token\ndate_time_input_format\ninput_format_parallel_parsing\nversion 24.3.2.23\n"

// TestClickHouseSendRequest: the insert, its settings, credentials and a
// byte-identical gzip body; the deduplication token is stable for a batch
// and differs for another batch with the same rows.
// TestIsCodeName: a code name is capital letters, digits and underscores,
// starting with a letter; the bytes next to each of those ranges are not.
func TestIsCodeName(t *testing.T) {
	for s, want := range map[string]bool{
		"AZ_09": true, "TOO_MANY_PARTS": true, "Z": true,
		"": false, "0A": false, "@A": false, "[A": false, "A@": false, "A[": false, "A/": false, "A:": false, "Aa": false, "A-B": false,
	} {
		if got := isCodeName(s); got != want {
			t.Errorf("isCodeName(%q) = %v; want %v", s, got, want)
		}
	}
}

// TestCodeTable: every name in the table reads as a code name, and every
// code whose insert may have been written is one that is retried: Send
// asks mayHaveWritten only of failures it will retry.
func TestCodeTable(t *testing.T) {
	for n, c := range codes {
		if c.name != "" && !isCodeName(c.name) {
			t.Errorf("code %d: name %q", n, c.name)
		}
		if c.mayHaveWritten && c.class != classRetry {
			t.Errorf("code %d %s may have written but is not retried (class %d)", n, c.name, c.class)
		}
	}
}

// TestMayHaveWritten: which failures leave an insert's outcome unknown, so
// a retry that ClickHouse drops as a duplicate is not taken for skipped
// rows: a 5xx from whatever answered (a proxy in front of ClickHouse has
// no code), and ClickHouse's timeouts and lost connections whatever their
// status; never a refusal before anything was written.
func TestMayHaveWritten(t *testing.T) {
	for _, tc := range []struct {
		status, code int
		want         bool
	}{
		{502, 0, true}, {500, 0, true}, {499, 0, false}, {404, 0, false},
		{500, 159, true}, {400, 209, true}, {500, 394, true},
		{500, 60, false}, {400, 27, false},
	} {
		if got := (exception{status: tc.status, code: tc.code}).mayHaveWritten(); got != tc.want {
			t.Errorf("status %d code %d: mayHaveWritten = %v; want %v", tc.status, tc.code, got, tc.want)
		}
	}
}

// TestInsertParams: the ratio reaches ClickHouse as written, the error
// count is the ratio of the whole batch, and a batch above ClickHouse's
// default block size is inserted as one block, so it is written whole or
// not at all.
func TestInsertParams(t *testing.T) {
	c, err := New(Options{Addr: "h:1", Database: "x", AllowErrorsRatio: 0.05})
	if err != nil {
		t.Fatal(err)
	}
	big := defaultMaxInsertBlockSize + 1
	q := c.insertParams("`x`.`t`", big, "tok", "qid", &serverFeatures{})
	if got := q.Get("input_format_allow_errors_ratio"); got != "0.05" {
		t.Errorf("input_format_allow_errors_ratio = %q; want 0.05", got)
	}
	if got, want := q.Get("input_format_allow_errors_num"), strconv.Itoa(int(0.05*float64(big))); got != want {
		t.Errorf("input_format_allow_errors_num = %q; want %s", got, want)
	}
	if got := q.Get("max_insert_block_size"); got != strconv.Itoa(big) {
		t.Errorf("max_insert_block_size = %q; want %d", got, big)
	}
	if q := c.insertParams("`x`.`t`", 10, "tok", "qid", &serverFeatures{}); q.Has("max_insert_block_size") {
		t.Errorf("a small batch set max_insert_block_size=%s; want the server's default", q.Get("max_insert_block_size"))
	}
}

func TestClickHouseSendRequest(t *testing.T) {
	t.Parallel()
	f, c := newFakeCH(t, newServerSettings, func(int) (int, map[string]string, string) {
		return 200, map[string]string{"X-ClickHouse-Summary": `{"written_rows":"3"}`}, ""
	})
	lines := []string{`{"id":18446744073709551615,"s":"Zürich 東京 \u00e9"}`, `{"b":2,"a":1}`, `{"n":9007199254740993}`}
	ctx := context.Background()
	for _, b := range []*upstream.Batch{chBatch("page_views", 100, lines...), chBatch("page_views", 100, lines...), chBatch("page_views", 101, lines...)} {
		res, err := c.Send(ctx, b)
		if err != nil || res.SuccessfulRows != 3 || res.QuarantinedRows != 0 || res.Status != 200 {
			t.Fatalf("Send: got %+v, %v; want 3 successful rows", res, err)
		}
	}
	detects, inserts := f.seen()
	if detects != 1 {
		t.Errorf("feature detections: got %d; want 1", detects)
	}
	in := inserts[0]
	want := map[string]string{
		"query":                            "INSERT INTO `analytics`.`page_views` FORMAT JSONEachRow",
		"input_format_skip_unknown_fields": "1",
		"input_format_allow_errors_ratio":  "0.5",
		"input_format_allow_errors_num":    "1",
		"date_time_input_format":           "best_effort",
		"input_format_parallel_parsing":    "0",
		"log_queries":                      "1", // until a summary header was seen
	}
	for k, v := range want {
		if in.params[k] != v {
			t.Errorf("setting %s: got %q; want %q", k, in.params[k], v)
		}
	}
	if _, ok := inserts[1].params["log_queries"]; ok {
		t.Errorf("log_queries still sent after the server sent X-ClickHouse-Summary")
	}
	if want := strings.Join(lines, "\n") + "\n"; in.body != want {
		t.Errorf("body: got %q; want %q (byte-identical)", in.body, want)
	}
	if in.encoding != "gzip" {
		t.Errorf("Content-Encoding: got %q; want gzip", in.encoding)
	}
	if want := "Basic " + base64.StdEncoding.EncodeToString([]byte("writer:pw")); in.auth != want {
		t.Errorf("Authorization: got %q; want %q", in.auth, want)
	}
	tok := func(i int) string { return inserts[i].params["insert_deduplication_token"] }
	if tok(0) == "" || tok(0) != tok(1) || tok(0) == tok(2) {
		t.Errorf("insert_deduplication_token: got %q, %q (same batch), %q (other batch); want equal, then different", tok(0), tok(1), tok(2))
	}
	if inserts[0].params["query_id"] == inserts[1].params["query_id"] {
		t.Errorf("query_id repeated across attempts: %q", inserts[0].params["query_id"])
	}
}

// TestClickHouseSendOldServer: without the newer settings, none is sent.
func TestClickHouseSendOldServer(t *testing.T) {
	t.Parallel()
	f, c := newFakeCH(t, "version 18.16.1\n", func(int) (int, map[string]string, string) {
		return 200, map[string]string{"X-ClickHouse-Summary": `{"written_rows":"1"}`}, ""
	})
	if _, err := c.Send(context.Background(), chBatch("t", 1, `{}`)); err != nil {
		t.Fatal(err)
	}
	_, inserts := f.seen()
	for _, k := range []string{"insert_deduplication_token", "date_time_input_format", "input_format_parallel_parsing"} {
		if v, ok := inserts[0].params[k]; ok {
			t.Errorf("setting %s=%q sent to a server without it", k, v)
		}
	}
}

// TestClickHouseQuarantine: rows missing from written_rows are quarantined,
// except after an attempt that may have been written: then ClickHouse
// dropped the retry as a duplicate.
func TestClickHouseQuarantine(t *testing.T) {
	t.Parallel()
	f, c := newFakeCH(t, newServerSettings, func(n int) (int, map[string]string, string) {
		switch n {
		case 1:
			return 200, map[string]string{"X-ClickHouse-Summary": `{"written_rows":"3"}`}, ""
		case 2:
			return 500, nil, "Code: 159. DB::Exception: Timeout exceeded (TIMEOUT_EXCEEDED)"
		default:
			return 200, map[string]string{"X-ClickHouse-Summary": `{"written_rows":"0"}`}, ""
		}
	})
	ctx := context.Background()
	res, err := c.Send(ctx, chBatch("t", 1, `{}`, `{}`, `{"bad":1}`, `{}`))
	if err != nil || res.SuccessfulRows != 3 || res.QuarantinedRows != 1 {
		t.Errorf("4 rows, 3 written: got %+v, %v; want 3 successful, 1 quarantined", res, err)
	}
	b := chBatch("t", 2, `{}`, `{}`)
	if _, err := c.Send(ctx, b); err == nil {
		t.Fatal("timeout: got nil error; want a retryable one")
	} else if _, retry := upstream.Retryable(err); !retry {
		t.Fatalf("timeout: got %v; want retryable", err)
	}
	res, err = c.Send(ctx, b)
	if err != nil || res.SuccessfulRows != 2 || res.QuarantinedRows != 0 {
		t.Errorf("retry deduplicated by ClickHouse: got %+v, %v; want 2 successful, 0 quarantined", res, err)
	}
	_, inserts := f.seen()
	if tok := inserts[1].params["insert_deduplication_token"]; tok != inserts[2].params["insert_deduplication_token"] {
		t.Errorf("the retry carried another token")
	}
}

// TestClickHouseQueryLogWithoutSummaries: a server that sends no
// X-ClickHouse-Summary (18.x) keeps being asked to log its inserts, the
// only other way to count skipped rows.
func TestClickHouseQueryLogWithoutSummaries(t *testing.T) {
	t.Parallel()
	f, c := newFakeCH(t, "version 18.16.1\n", nil)
	for i := range 2 {
		if _, err := c.Send(context.Background(), chBatch("t", int64(i), `{}`)); err != nil {
			t.Fatal(err)
		}
	}
	_, inserts := f.seen()
	for i, in := range inserts {
		if in.params["log_queries"] != "1" {
			t.Errorf("insert %d: log_queries=%q; want 1 while no summary was seen", i, in.params["log_queries"])
		}
	}
}

// TestClickHouseRedetects: a server that no longer knows a setting (a
// downgrade) makes the send retryable and the next one detect again.
func TestClickHouseRedetects(t *testing.T) {
	t.Parallel()
	f, c := newFakeCH(t, newServerSettings, func(n int) (int, map[string]string, string) {
		if n == 1 {
			return 404, nil, "Code: 115, e.displayText() = DB::Exception: Unknown setting insert_deduplication_token, e.what() = DB::Exception"
		}
		return 200, nil, ""
	})
	ctx := context.Background()
	b := chBatch("t", 1, `{}`)
	if _, err := c.Send(ctx, b); err == nil {
		t.Fatal("got nil error; want a retryable one")
	}
	f.mu.Lock()
	f.settings = "version 18.16.1\n"
	f.mu.Unlock()
	if _, err := c.Send(ctx, b); err != nil {
		t.Fatal(err)
	}
	detects, inserts := f.seen()
	if detects != 2 {
		t.Errorf("detections: got %d; want 2", detects)
	}
	if _, ok := inserts[1].params["insert_deduplication_token"]; ok {
		t.Errorf("token still sent after detecting a server without it")
	}
}

// TestClickHouseUnreachable: a connection refused is retryable and names
// the server without credentials.
func TestClickHouseUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err := New(Options{Addr: addr, User: "u", Password: "pw-SECRET", Database: "d", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Send(context.Background(), chBatch("t", 1, `{}`))
	if _, retry := upstream.Retryable(err); !retry {
		t.Fatalf("got %v; want a retryable error", err)
	}
	if !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "pw-SECRET") {
		t.Errorf("error %q: want the address and no password", err)
	}
}
