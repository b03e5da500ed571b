package clickhouse

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/chtest"
	"github.com/tbproxy/tbproxy/upstream"
)

// TestClickHouseServer runs the upstream against a real ClickHouse (the
// installed clickhouse-server; 18.16 in CI): what lands in the table, and
// how each kind of refusal is classified.
func TestClickHouseServer(t *testing.T) {
	t.Parallel()
	srv := chtest.Start(t)
	srv.MustQuery(t, "CREATE DATABASE analytics")
	srv.MustQuery(t, "CREATE TABLE analytics.events (id UInt64, big Int64, s String, ts DateTime) ENGINE = MergeTree() ORDER BY id")
	newCH := func(t *testing.T, user, password, db string, ratio float64) *Client {
		t.Helper()
		c, err := New(Options{Addr: srv.Addr(), User: user, Password: password, Database: db,
			AllowErrorsRatio: ratio, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	strict := newCH(t, chtest.User, chtest.Password, "analytics", 0)
	ctx := context.Background()
	count := func(t *testing.T) int {
		t.Helper()
		n, err := strconv.Atoi(strings.TrimSpace(srv.MustQuery(t, "SELECT count() FROM analytics.events")))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("rows land exactly", func(t *testing.T) {
		res, err := strict.Send(ctx, chBatch("events", 1,
			`{"id":18446744073709551615,"big":-9223372036854775808,"s":"Zürich 東京 🎉 \"q\" \\ /","ts":"2026-11-23T10:00:00Z","extra":{"nested":[1,{"x":2}]}}`,
			`{"ts":"2026-11-23T10:00:01Z","s":"","big":9007199254740993,"id":1}`))
		if err != nil || res.SuccessfulRows != 2 || res.QuarantinedRows != 0 {
			t.Fatalf("Send: got %+v, %v; want 2 successful rows", res, err)
		}
		got := srv.MustQuery(t, "SELECT id, big, s, toUnixTimestamp(ts) FROM analytics.events ORDER BY id FORMAT TabSeparated")
		want := "1\t9007199254740993\t\t1795428001\n" +
			"18446744073709551615\t-9223372036854775808\tZürich 東京 🎉 \"q\" \\\\ /\t1795428000\n"
		if got != want {
			t.Errorf("rows: got %q; want %q", got, want)
		}
	})

	t.Run("a bad row fails the batch without a ratio", func(t *testing.T) {
		before := count(t)
		_, err := strict.Send(ctx, chBatch("events", 2, `{"id":10}`, `{"id":"not a number"}`, `{"id":11}`))
		var se *upstream.StatusError
		if !errors.As(err, &se) || se.Status != 400 || !strings.Contains(se.Message, "cannot parse") {
			t.Fatalf("got %v; want a 400 upstream.StatusError saying ClickHouse cannot parse the rows", err)
		}
		if after := count(t); after != before {
			t.Errorf("count: got %d after a refused batch; want %d (nothing written)", after, before)
		}
	})

	t.Run("a bad row is quarantined within the ratio", func(t *testing.T) {
		before := count(t)
		lenient := newCH(t, chtest.User, chtest.Password, "analytics", 0.5)
		// The bad row comes first: ClickHouse alone would judge the ratio
		// on the rows read so far (1 of 1) and refuse the batch.
		res, err := lenient.Send(ctx, chBatch("events", 3, `{"id":"bad"}`, `{"id":20}`, `{"id":21}`, `{"id":22}`))
		if err != nil || res.SuccessfulRows != 3 || res.QuarantinedRows != 1 {
			t.Fatalf("Send: got %+v, %v; want 3 successful, 1 quarantined", res, err)
		}
		if after := count(t); after != before+3 {
			t.Errorf("count: got %d; want %d", after, before+3)
		}
		_, err = lenient.Send(ctx, chBatch("events", 4, `{"id":"bad"}`, `{"id":"worse"}`, `{"id":30}`))
		var se *upstream.StatusError
		if !errors.As(err, &se) || se.Status != 400 {
			t.Errorf("2 bad rows of 3 with ratio 0.5: got %v; want a 400 upstream.StatusError", err)
		}
	})

	t.Run("missing table", func(t *testing.T) {
		_, err := strict.Send(ctx, chBatch("nope", 5, `{"id":1}`))
		var se *upstream.StatusError
		if !errors.As(err, &se) || se.Status != 404 || !strings.Contains(se.Message, "table `analytics`.`nope` does not exist") {
			t.Errorf("got %v; want a 404 upstream.StatusError naming the table", err)
		}
	})

	t.Run("missing database", func(t *testing.T) {
		_, err := newCH(t, chtest.User, chtest.Password, "nodb", 0).Send(ctx, chBatch("events", 6, `{"id":1}`))
		var se *upstream.StatusError
		if !errors.As(err, &se) || se.Status != 404 || !strings.Contains(se.Message, "database `nodb` does not exist") {
			t.Errorf("got %v; want a 404 upstream.StatusError naming the database", err)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		_, err := newCH(t, chtest.User, "wrong-pass-123", "analytics", 0).Send(ctx, chBatch("events", 7, `{"id":1}`))
		var se *upstream.StatusError
		if !errors.As(err, &se) || se.Status != 403 || strings.Contains(se.Message, "wrong-pass-123") {
			t.Errorf("got %v; want a 403 upstream.StatusError without the password", err)
		}
	})

	t.Run("a failing materialized view is a partial write, never retried", func(t *testing.T) {
		srv.MustQuery(t, "CREATE TABLE analytics.base (id UInt64, d UInt64) ENGINE = MergeTree() ORDER BY id")
		srv.MustQuery(t, "CREATE TABLE analytics.ratio (r UInt64) ENGINE = MergeTree() ORDER BY r")
		srv.MustQuery(t, "CREATE MATERIALIZED VIEW analytics.ratio_mv TO analytics.ratio AS SELECT intDiv(id, d) AS r FROM analytics.base")
		_, err := strict.Send(ctx, chBatch("base", 20, `{"id":1,"d":0}`))
		var se *upstream.StatusError
		if !errors.As(err, &se) || se.Status != 422 || !strings.Contains(se.Message, "materialized view failed") {
			t.Fatalf("got %v; want a 422 upstream.StatusError (partial write)", err)
		}
		if n := strings.TrimSpace(srv.MustQuery(t, "SELECT count() FROM analytics.base")); n != "1" {
			t.Errorf("base table holds %s rows; the test expects ClickHouse to have written it before the view failed", n)
		}
	})

	t.Run("wrong-typed values are refused rows, not retried", func(t *testing.T) {
		srv.MustQuery(t, "CREATE TABLE analytics.typed (id UInt64, a Array(UInt8), u UUID) ENGINE = MergeTree() ORDER BY id")
		for _, row := range []string{
			`{"id":1,"a":"not an array","u":"00000000-0000-0000-0000-000000000000"}`,
			`{"id":2,"a":[1,"x"],"u":"00000000-0000-0000-0000-000000000000"}`,
			`{"id":3,"a":[1],"u":"not-a-uuid secret@example.com"}`,
			`{"id":"secret@example.com"}`,
		} {
			_, err := strict.Send(ctx, chBatch("typed", 21, row))
			var se *upstream.StatusError
			if !errors.As(err, &se) || se.Status != 400 {
				t.Errorf("%s: got %v; want a 400 upstream.StatusError", row, err)
				continue
			}
			if strings.Contains(se.Message, "secret@example.com") {
				t.Errorf("%s: the client-facing message quotes the row: %q", row, se.Message)
			}
		}
	})

	t.Run("server down then back", func(t *testing.T) {
		srv.Kill()
		_, err := strict.Send(ctx, chBatch("events", 8, `{"id":40}`))
		if _, retry := upstream.Retryable(err); !retry {
			t.Errorf("server down: got %v; want a retryable error", err)
		}
		srv.Restart(t)
		if _, err := strict.Send(ctx, chBatch("events", 8, `{"id":40}`)); err != nil {
			t.Errorf("server back: got %v; want nil", err)
		}
	})
}
