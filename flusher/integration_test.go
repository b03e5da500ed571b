package flusher

import (
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/fakebird"
	"github.com/tbproxy/tbproxy/upstream/tinybird"
)

// TestThroughTinybird is the flusher's one end-to-end check: the real
// Tinybird client against fakebird, where every other test here scripts
// the client's answers (script). It shows the two agree on what those
// answers mean: rows under the proxy's token and under a client's
// (pass-through) arrive once each, byte-identical, gzip'd with wait=true and
// the key's token; a 500 is retried, a 413 split, a 400 dropped with
// Tinybird's message for its waiting client and a metric.
func TestThroughTinybird(t *testing.T) {
	const (
		proxyToken  = "tb-upstream-token"
		clientToken = "client-token"
	)
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{proxyToken, clientToken}, MaxBodyBytes: 2048})
	fb.Script(fakebird.Response{Status: 500})
	fb.SetFault(fakebird.ForDatasource("bad", fakebird.Always(fakebird.Response{Status: 400, Body: `{"error":"column x is missing"}`})))
	up, err := tinybird.New(tinybird.Options{BaseURL: fb.URL(), Token: proxyToken, Wait: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h := startFlusher(t, up, Options{FlushInterval: time.Hour})
	want := map[buffer.Key][]string{}
	for i, k := range []buffer.Key{{Datasource: "alpha"}, {Datasource: "beta"},
		{Token: clientToken, Datasource: "alpha"}, {Token: clientToken, Datasource: "beta"}} {
		for j := range 50 {
			want[k] = append(want[k], event(100*i+j))
		}
		// One request of about 3.6 kB, so one batch of at least that much
		// (no interval passes): over the 2 kB limit, so refused 413 and
		// split, whatever the machine's speed.
		h.put(t, k, want[k]...)
	}
	w := putWaiting(t, h.buf, buffer.Key{Datasource: "bad"}, event(1))
	if err := h.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}

	got := map[buffer.Key][]string{}
	for _, r := range fb.Rows() {
		k := buffer.Key{Token: r.Token, Datasource: r.Datasource}
		if k.Token == proxyToken {
			k.Token = ""
		}
		got[k] = append(got[k], string(r.Line))
	}
	for k, lines := range want {
		if !slices.Equal(got[k], lines) {
			t.Errorf("%+v: got %d rows; want %d, in order and byte-identical", k, len(got[k]), len(lines))
		}
	}
	if n := fb.RowCount(); n != 200 {
		t.Errorf("got %d rows upstream; want 200", n)
	}
	for _, r := range fb.Requests() {
		if r.Encoding != "gzip" || r.Query.Get("wait") != "true" || (r.Token != proxyToken && r.Token != clientToken) {
			t.Errorf("request: encoding %q wait %q token known=%v; want gzip, true, the proxy's or the client's token",
				r.Encoding, r.Query.Get("wait"), r.Token == proxyToken || r.Token == clientToken)
		}
	}
	if got := fb.StatusCounts(); got[500] != 1 || got[413] == 0 || got[400] != 1 {
		t.Errorf("upstream statuses %v; want one 500, some 413s, one 400", got)
	}
	if _, _, f := waitDone(t, w); f == nil || f.Status != 400 || f.Message != "column x is missing" {
		t.Errorf("the refused batch's client was told %+v; want 400 and Tinybird's message", f)
	}
	if got := testutil.ToFloat64(h.f.m.delivered); got != 200 {
		t.Errorf("tbproxy_delivered_events_total: got %v; want 200", got)
	}
	if got := testutil.ToFloat64(h.f.m.retries); got != 1 {
		t.Errorf("tbproxy_upstream_retries_total: got %v; want 1", got)
	}
	if testutil.ToFloat64(h.f.m.splits) == 0 {
		t.Errorf("no split counted")
	}
	if got := testutil.ToFloat64(h.f.m.dropped.WithLabelValues(reasonUpstreamRejected)); got != 1 {
		t.Errorf("dropped{reason=upstream_rejected}: got %v; want 1", got)
	}
	if h.buf.Len() != 0 {
		t.Errorf("buffer still holds %d events", h.buf.Len())
	}
}
