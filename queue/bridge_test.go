package queue

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/natstest"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// deadLetters records what the bridge dead-letters, as main's wiring of
// the flusher's writer would receive it.
type deadLetters struct {
	mu  sync.Mutex
	got []string // "<datasource> <reason>: <data>"
}

func (d *deadLetters) write(key buffer.Key, data []byte, _ int, f *buffer.Failure) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.got = append(d.got, key.Datasource+" "+f.Reason+": "+string(data))
	return "dead.ndjson"
}

func (d *deadLetters) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.got...)
}

// openQueue opens a queue on ns in front of buf and runs its bridge until
// the test ends.
func openQueue(t *testing.T, ns *natstest.Server, buf *buffer.Buffer, opts Options) *Queue {
	t.Helper()
	q := open(t, ns, buf, opts)
	runBridge(t, q)
	return q
}

// TestBridgeChecksMessages: messages the proxy would never publish are
// dead-lettered as malformed, in each mode; the valid ones beside them are
// buffered with their token (pass-through) or none.
func TestBridgeChecksMessages(t *testing.T) {
	ns := natstest.Start(t)
	for _, mode := range []struct {
		name         string
		clientTokens bool
		token        string // a valid message's token in this mode
	}{
		{"proxy token", false, ""},
		{"pass-through", true, "client-token"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			buf := buffer.New(buffer.Options{MaxEvents: 1000, MaxBytes: 1 << 20})
			var dead deadLetters
			subject := "t" + strings.ReplaceAll(mode.name, " ", "")
			openQueue(t, ns, buf, Options{Stream: strings.ToUpper(subject), Subject: subject,
				ClientTokens: mode.clientTokens, DeadLetter: dead.write})
			nc, err := nats.Connect(ns.URL())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			publish := func(ds, token, data string) {
				m := nats.NewMsg(subject + ".x")
				m.Header.Set(hdrDatasource, ds)
				if token != "" {
					m.Header.Set(hdrToken, token)
				}
				m.Data = []byte(data)
				if err := nc.PublishMsg(m); err != nil {
					t.Fatal(err)
				}
			}
			wrongToken := "a-token-in-proxy-token-mode"
			if mode.clientTokens {
				wrongToken = "bad token with spaces"
			}
			publish("../x", mode.token, `{"bad":"name"}`+"\n")
			publish("ds", wrongToken, `{"bad":"token"}`+"\n")
			publish("ds", mode.token, `{"ok":0}`+"\n"+"[1]\n")
			publish("ds", mode.token, `{"ok":1}`+"\n")
			poll.Until(t, "3 dead letters and 1 buffered", func() bool { return len(dead.list()) == 3 && buf.Len() == 1 })
			for _, d := range dead.list() {
				if !strings.Contains(d, " malformed: ") {
					t.Errorf("dead letter %q; want reason malformed", d)
				}
			}
			got := buf.Take(nil)
			if len(got) != 1 || string(got[0].Data) != `{"ok":1}`+"\n" || got[0].Key != (buffer.Key{Datasource: "ds", Token: mode.token}) {
				t.Errorf("buffered %+v; want only the valid message", got)
			}
		})
	}
}

// TestPutWaitingTooLarge: a request larger than the server's max_payload is
// refused with the limit named, before anything is published.
func TestPutWaitingTooLarge(t *testing.T) {
	ns := natstest.StartStock(t, true)
	buf := buffer.New(buffer.Options{MaxEvents: 1 << 20, MaxBytes: 64 << 20})
	q := openQueue(t, ns, buf, Options{Stream: "BIG", Subject: "big"})
	line := []byte(`{"pad":"` + strings.Repeat("x", 1<<20) + `"}`)
	err := q.PutWaiting(buffer.Key{Datasource: "ds"}, [][]byte{line}, nil)
	var tl *buffer.TooLargeError
	if !errors.As(err, &tl) || !strings.Contains(tl.Limit, "max_payload") {
		t.Fatalf("got %v; want a TooLargeError naming max_payload", err)
	}
	if got := testutil.ToFloat64(q.m.publishes.WithLabelValues(resultTooLarge)); got != 1 {
		t.Errorf("publishes{result=too_large} = %v; want 1", got)
	}
}

// TestBridgeWaitsForRoom: the bridge fetches only while the buffer is less
// than half full, and a fetched message that does not fit yet waits for
// room; both wake as the flusher releases rows, and the message is
// buffered and acked.
func TestBridgeWaitsForRoom(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	buf := buffer.New(buffer.Options{MaxEvents: 4, MaxBytes: 1 << 20})
	local := buffer.Key{Datasource: "local"}
	for _, r := range []string{`{"held":1}`, `{"held":2}`} { // half full: no fetching
		if err := buf.Put(local, rows(r)); err != nil {
			t.Fatal(err)
		}
	}
	held := buf.Take(nil)
	q := openQueue(t, ns, buf, Options{Stream: "WAITROOM", Subject: "waitroom"})
	if err := q.PutWaiting(buffer.Key{Datasource: "events"}, rows(`{"a":1}`, `{"a":2}`, `{"a":3}`, `{"a":4}`), nil); err != nil {
		t.Fatal(err)
	}

	buf.Release(local, 1, held[0].Data) // a quarter full: the bridge fetches, but 4 rows do not fit
	poll.Until(t, "the bridge to fetch the message", func() bool { return q.held.len() == 1 })
	if buf.Len() != 1 {
		t.Fatalf("%d events buffered; want only the 1 held", buf.Len())
	}
	buf.Release(local, 1, held[1].Data)
	poll.Until(t, "the message buffered", func() bool { return buf.Len() == 4 })
	if n := finish(buf, nil); n != 4 {
		t.Fatalf("finished %d rows; want the message's 4", n)
	}
	poll.Until(t, "the message acked and gone from the stream", func() bool { return streamMsgs(t, js, "WAITROOM") == 0 })
	wantCount(t, "acked", q.m.acked, 1)
	wantCount(t, "naked", q.m.naked, 0)
}
