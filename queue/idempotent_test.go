package queue

import (
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/internal/natstest"
	"github.com/tbproxy/tbproxy/internal/poll"
)

// TestPutIdempotentAcrossReplicas: the same id published by two replicas is
// stored once, the second told it was a duplicate; another id is stored.
func TestPutIdempotentAcrossReplicas(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	opts := Options{Stream: "IDEM", Subject: "idem", Duplicates: time.Minute}
	a, b := open(t, ns, newBuffer(), opts), open(t, ns, newBuffer(), opts)
	key := buffer.Key{Datasource: "events"}
	if dup, err := a.PutIdempotent(key, rows(`{"a":1}`), nil, "id-1"); err != nil || dup {
		t.Fatalf("first: dup %v, err %v", dup, err)
	}
	if dup, err := b.PutIdempotent(key, rows(`{"a":1}`), buffer.NewWaiter(), "id-1"); err != nil || !dup {
		t.Fatalf("the same id from another replica: dup %v, err %v; want a duplicate", dup, err)
	}
	if dup, err := b.PutIdempotent(key, rows(`{"a":2}`), nil, "id-2"); err != nil || dup {
		t.Fatalf("another id: dup %v, err %v", dup, err)
	}
	if got := streamMsgs(t, js, "IDEM"); got != 2 {
		t.Fatalf("stream holds %d messages; want 2", got)
	}
	wantCount(t, "duplicates", b.m.duplicates, 1)
	// The stream's duplicate window is IDEMPOTENCY_WINDOW.
	s, err := js.Stream(t.Context(), "IDEM")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(t.Context()); err != nil || info.Config.Duplicates != time.Minute {
		t.Fatalf("duplicate window: %v (%v); want 1m", info.Config.Duplicates, err)
	}
	// What was stored goes to a bridge like any message.
	buf := newBuffer()
	c := open(t, ns, buf, opts)
	runBridge(t, c)
	poll.Until(t, "both messages buffered", func() bool { return buf.Len() == 2 })
}

// TestBroadcastListen: what one replica broadcasts, every replica hears,
// and the stream stores none of it.
func TestBroadcastListen(t *testing.T) {
	ns := natstest.Start(t)
	js := client(t, ns)
	opts := Options{Stream: "SHARE", Subject: "share"}
	a, b := open(t, ns, newBuffer(), opts), open(t, ns, newBuffer(), opts)
	got := make(chan string, 4)
	for _, q := range []*Queue{a, b} {
		if err := q.Listen("limits", func(d []byte) { got <- string(d) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Broadcast("limits", []byte("report")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case d := <-got:
			if d != "report" {
				t.Fatalf("heard %q", d)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a replica did not hear the broadcast")
		}
	}
	if n := streamMsgs(t, js, "SHARE"); n != 0 {
		t.Fatalf("the stream stored %d broadcasts; want 0", n)
	}
}
