package limits

import (
	"crypto/sha256"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	json "github.com/goccy/go-json"
)

func decodeReport(t testing.TB, data []byte) report {
	t.Helper()
	var r report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("decode report %s: %v", data, err)
	}
	return r
}

// pair is two replicas' Limiters on one clock.
func pair(t *testing.T, at time.Time) (a, b *Limiter, clk *fakeClock) {
	t.Helper()
	clk = newClock(at)
	return New(Options{Now: clk.Now}), New(Options{Now: clk.Now}), clk
}

// send carries from's report to to, and returns it.
func send(t *testing.T, from *Limiter, fromID string, to *Limiter, toID string) []byte {
	t.Helper()
	rep := from.AppendReport(nil, fromID)
	if len(rep) == 0 {
		t.Fatalf("%s has nothing to report", fromID)
	}
	if err := to.Merge(rep, toID); err != nil {
		t.Fatalf("Merge: %v", err)
	}
	return rep
}

// TestReportExchange: two replicas see each other's counts in both
// layers, each event reported once.
func TestReportExchange(t *testing.T) {
	a, b, clk := pair(t, base.Add(15*time.Second))
	lim := Limit{PerMinute: 100, PerDay: 1000}
	mustTake(t, a, "k", lim, 30)
	rep := send(t, a, "a", b, "b")
	want := report{Replica: "a", Minute: base.Unix() / 60, Day: base.Unix() / 86400, Counts: []reportCount{{Key: "k", Cur: 30, Day: 30}}}
	if got := decodeReport(t, rep); got.Replica != want.Replica || got.Minute != want.Minute || got.Day != want.Day ||
		len(got.Counts) != 1 || !reflect.DeepEqual(got.Counts[0], want.Counts[0]) {
		t.Fatalf("report %s; want %+v", rep, want)
	}
	if got, want := b.Take("k", lim, 71), (Decision{Layer: Minute, Limit: 100, Remaining: 70, RetryAfter: 47 * time.Second, Reset: 47 * time.Second}); got != want { // 30 weigh 29 two seconds into the next minute
		t.Fatalf("b after a's report: got %+v; want %+v", got, want)
	}
	mustTake(t, b, "k", lim, 70)

	if got := a.AppendReport([]byte("x"), "a"); string(got) != "x" {
		t.Fatalf("a second report with nothing new: %q; want dst unchanged", got)
	}
	send(t, b, "b", a, "a")
	if d := a.Take("k", lim, 1); d.Allowed || d.Remaining != 0 {
		t.Fatalf("a after b's report: got %+v; want refused, nothing left", d)
	}

	// The day layer: 100 of 1000 used on both; a new minute.
	clk.Set(base.Add(5 * time.Minute))
	mustTake(t, a, "k", lim, 100)
	mustTake(t, b, "k", lim, 100)
	rep = send(t, a, "a", b, "b")
	if got := string(rep); !strings.HasPrefix(got, `{"replica":"a"`) {
		t.Errorf("report %s", got)
	}
	if got, want := b.Take("k", Limit{PerDay: 1000}, 1), (Decision{Allowed: true, Layer: Day, Limit: 1000, Remaining: 1000 - 300 - 1, Reset: 12*time.Hour - 5*time.Minute}); got != want {
		t.Errorf("b's day: got %+v; want %+v", got, want)
	}
}

// TestReportWindows: a report names its windows, and the receiver adds
// each count to the window it was admitted in, as its own clock sees it.
func TestReportWindows(t *testing.T) {
	lim := Limit{PerMinute: 100}
	a, b, clk := pair(t, base.Add(50*time.Second))
	mustTake(t, a, "k", lim, 30)
	clk.Set(base.Add(time.Minute + 10*time.Second))
	mustTake(t, a, "k", lim, 20)
	rep := send(t, a, "a", b, "b")
	if got := decodeReport(t, rep).Counts; len(got) != 1 || !reflect.DeepEqual(got[0], reportCount{Key: "k", Cur: 20, Prev: 30}) {
		t.Fatalf("counts %+v; want 20 this minute, 30 the previous one", got)
	}
	// b's estimate at 10 s: 30×50/60 + 20 = 45.
	if got := b.Take("k", lim, 56); got.Allowed || got.Remaining != 55 {
		t.Fatalf("b: got %+v; want refused with 55 left", got)
	}

	// A report merged after a minute boundary counts in the previous
	// window there.
	a, b, clk = pair(t, base.Add(50*time.Second))
	mustTake(t, a, "k", lim, 40)
	rep = a.AppendReport(nil, "a")
	clk.Set(base.Add(time.Minute + 30*time.Second))
	if err := b.Merge(rep, "b"); err != nil {
		t.Fatal(err)
	}
	if got := mustTake(t, b, "k", lim, 1); got.Remaining != 100-20-1 {
		t.Fatalf("b: got %+v; want 40 weighing 20", got)
	}

	// Two minutes on, the report counts nowhere, and b tracks nothing.
	a, b, clk = pair(t, base)
	mustTake(t, a, "k", lim, 40)
	rep = a.AppendReport(nil, "a")
	clk.Add(2 * time.Minute)
	if err := b.Merge(rep, "b"); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 0 {
		t.Errorf("b.Len() = %d after a stale report; want 0", b.Len())
	}

	// A report from a clock ahead, for a minute b has not reached, counts
	// only its previous minute.
	a, b, clk = pair(t, base.Add(59*time.Second))
	mustTake(t, a, "k", lim, 10)
	clk.Add(2 * time.Second)
	mustTake(t, a, "k", lim, 5)
	rep = a.AppendReport(nil, "a")
	clk.Add(-2 * time.Second)
	if err := b.Merge(rep, "b"); err != nil {
		t.Fatal(err)
	}
	if got := mustTake(t, b, "k", lim, 1); got.Remaining != 100-10-1 {
		t.Fatalf("b: got %+v; want the 10 of its current minute only", got)
	}
}

func TestOwnReportIgnored(t *testing.T) {
	a, _, _ := pair(t, base)
	lim := Limit{PerMinute: 100}
	mustTake(t, a, "k", lim, 30)
	rep := a.AppendReport(nil, "a")
	if err := a.Merge(rep, "a"); err != nil {
		t.Fatal(err)
	}
	if got := mustTake(t, a, "k", lim, 1); got.Remaining != 69 {
		t.Errorf("after merging its own report: got %+v; want 69 left", got)
	}
}

// TestReportBinaryKeys: keys that are not UTF-8 (raw digests) travel
// exactly, and two that JSON would both turn into U+FFFD stay apart.
func TestReportBinaryKeys(t *testing.T) {
	sum := sha256.Sum256([]byte("p.token"))
	digest := string(sum[:])
	if utf8.ValidString(digest) {
		t.Fatal("the test digest is valid UTF-8; pick another token")
	}
	a, b, _ := pair(t, base)
	lim := Limit{PerMinute: 100}
	for k, n := range map[string]int64{digest: 10, "\xff": 20, "\xfe": 30, "ascii": 40} {
		mustTake(t, a, k, lim, n)
	}
	send(t, a, "a", b, "b")
	for k, n := range map[string]int64{digest: 10, "\xff": 20, "\xfe": 30, "ascii": 40} {
		if got := b.Take(k, lim, 100-n+1); got.Allowed || got.Remaining != 100-n {
			t.Errorf("key %x: got %+v; want %d left", k, got, 100-n)
		}
	}
}

// TestReportAfterRefund: a refund is not reported; the others keep
// counting the refunded events until as many more are admitted.
func TestReportAfterRefund(t *testing.T) {
	a, _, _ := pair(t, base)
	lim := Limit{PerMinute: 1000}
	mustTake(t, a, "k", lim, 50)
	a.AppendReport(nil, "a")
	a.Refund("k", 50)
	if got := a.AppendReport(nil, "a"); got != nil {
		t.Fatalf("after a refund: %s; want nothing to report", got)
	}
	mustTake(t, a, "k", lim, 20)
	if got := a.AppendReport(nil, "a"); got != nil {
		t.Fatalf("20 after refunding 50 reported: %s; want nothing", got)
	}
	mustTake(t, a, "k", lim, 40)
	if got := decodeReport(t, a.AppendReport(nil, "a")).Counts; len(got) != 1 || !reflect.DeepEqual(got[0], reportCount{Key: "k", Cur: 10}) {
		t.Fatalf("counts %+v; want the 10 above the 50 reported", got)
	}
}

// TestMergeMaxKeys: identities from reports count toward MaxKeys.
func TestMergeMaxKeys(t *testing.T) {
	clk := newClock(base)
	a := New(Options{Now: clk.Now})
	b := New(Options{MaxKeys: 3, Now: clk.Now})
	lim := Limit{PerMinute: 100}
	mustTake(t, b, "local", lim, 1)
	for _, k := range []string{"r1", "r2", "r3"} {
		mustTake(t, a, k, lim, 1)
	}
	send(t, a, "a", b, "b")
	if s := b.Stats(); s != (Stats{Keys: 3, MergeSkipped: 1}) {
		t.Fatalf("Stats() = %+v; want 3 keys, 1 skipped", s)
	}
	if got := b.Take("new", lim, 1); !got.Untracked {
		t.Errorf("a new local key: got %+v; want Untracked", got)
	}
}

func validReport(counts string) string {
	return `{"replica":"a","minute":29550000,"day":20520,"counts":[{"k":"SECRETKEY","c":5},` + counts + `]}`
}

// TestMergeMalformed: a malformed report is refused whole, and its error
// names no key.
func TestMergeMalformed(t *testing.T) {
	now := time.Unix(29550000*60+30, 0)
	long := strings.Repeat("x", 257)
	for _, c := range []struct{ name, data string }{
		{"garbage", "SECRETKEY not json"},
		{"empty", ""},
		{"null", "null"},
		{"array", `[{"replica":"a"}]`},
		{"string", `"SECRETKEY"`},
		{"truncated", validReport(`{"k":"SECRETKEY2","c":1}`)[:60]},
		{"trailing data", validReport(`{"k":"SECRETKEY2","c":1}`) + `{}`},
		{"unknown field", `{"replica":"a","minute":29550000,"day":20520,"extra":1,"counts":[{"k":"SECRETKEY","c":5}]}`},
		{"unknown count field", validReport(`{"k":"SECRETKEY2","c":1,"x":2}`)},
		{"count as string", validReport(`{"k":"SECRETKEY2","c":"SECRETKEY"}`)},
		{"count as float", validReport(`{"k":"SECRETKEY2","c":1.5}`)},
		{"count overflows", validReport(`{"k":"SECRETKEY2","c":9223372036854775808}`)},
		{"key as number", validReport(`{"k":12,"c":1}`)},
		{"counts as object", `{"replica":"a","minute":29550000,"day":20520,"counts":{"SECRETKEY":5}}`},
		{"negative current", validReport(`{"k":"SECRETKEY2","c":-1}`)},
		{"negative previous", validReport(`{"k":"SECRETKEY2","p":-1,"c":5}`)},
		{"negative day", validReport(`{"k":"SECRETKEY2","d":-1,"c":5}`)},
		{"no events", validReport(`{"k":"SECRETKEY2"}`)},
		{"null count", validReport(`null`)},
		{"huge key", validReport(`{"k":"` + long + `","c":1}`)},
		{"huge binary key", validReport(`{"b":"` + strings.Repeat("AAAA", 86) + `","c":1}`)},
		{"bad base64", validReport(`{"b":"SECRETKEY!","c":1}`)},
		{"both key forms", validReport(`{"k":"SECRETKEY2","b":"AAAA","c":1}`)},
		{"repeated key", validReport(`{"k":"SECRETKEY","c":1}`)},
		{"negative minute", `{"replica":"a","minute":-1,"day":0,"counts":[{"k":"SECRETKEY","c":5}]}`},
		{"negative day window", `{"replica":"a","minute":29550000,"day":-1,"counts":[{"k":"SECRETKEY","c":5}]}`},
		{"day not the minute's", `{"replica":"a","minute":29550000,"day":20521,"counts":[{"k":"SECRETKEY","c":5}]}`},
		{"no replica", `{"minute":29550000,"day":20520,"counts":[{"k":"SECRETKEY","c":5}]}`},
		{"replica too long", `{"replica":"` + long + `","minute":29550000,"day":20520,"counts":[{"k":"SECRETKEY","c":5}]}`},
		{"replica as number", `{"replica":7,"minute":29550000,"day":20520,"counts":[{"k":"SECRETKEY","c":5}]}`},
		{"no counts", `{"replica":"a","minute":29550000,"day":20520,"counts":[]}`},
		{"more identities than MaxKeys", validReport(`{"k":"SECRETKEY2","c":1},{"k":"SECRETKEY3","c":1},{"k":"SECRETKEY4","c":1}`)},
		{"too large", validReport(`{"k":"SECRETKEY2","c":1}`) + strings.Repeat(" ", 4*maxCountBytes+2000)},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := New(Options{MaxKeys: 3, Now: func() time.Time { return now }})
			err := b.Merge([]byte(c.data), "b")
			if err == nil {
				t.Fatalf("Merge(%.80q) = nil; want an error", c.data)
			}
			if strings.Contains(err.Error(), "SECRETKEY") {
				t.Errorf("error %q names a key", err)
			}
			if b.Len() != 0 {
				t.Errorf("Len() = %d after a malformed report; want 0: nothing applied", b.Len())
			}
		})
	}
	// The base report is well formed.
	b := New(Options{MaxKeys: 3, Now: func() time.Time { return now }})
	if err := b.Merge([]byte(validReport(`{"k":"SECRETKEY2","c":1,"p":2,"d":3},{"b":"/w==","c":1}`)), "b"); err != nil || b.Len() != 3 {
		t.Fatalf("a valid report: err %v, Len %d; want nil, 3", err, b.Len())
	}
}

// FuzzMerge: Merge never panics, and a report it refuses changes nothing.
func FuzzMerge(f *testing.F) {
	f.Add([]byte(validReport(`{"k":"b","c":1,"p":2,"d":3}`)))
	f.Add([]byte(validReport(`{"b":"/w==","c":1}`)))
	f.Add([]byte(`{"replica":"a","minute":0,"day":0,"counts":[{"k":"","c":9223372036854775807,"p":9223372036854775807}]}`))
	f.Add([]byte(`{"replica":"a","minute":1,"day":0,"counts":[{"k":"x","c":-1}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		now := time.Unix(29550000*60+30, 0)
		l := New(Options{MaxKeys: 4, Now: func() time.Time { return now }})
		mustTake(t, l, "b", Limit{PerMinute: 100, PerDay: 1000}, 1)
		if err := l.Merge(data, "self"); err != nil && l.Len() != 1 {
			t.Fatalf("refused report changed the table: Len %d", l.Len())
		}
		d := l.Take("b", Limit{PerMinute: 100, PerDay: 1000}, 1)
		if d.Remaining < 0 || d.RetryAfter < 0 || d.Reset < 0 {
			t.Fatalf("after Merge: %+v", d)
		}
	})
}

// TestMergeLargestReport: the size bound refuses no report a replica can
// send. The largest has MaxKeys identities, each with a 256-byte key that
// JSON escapes whole (\u00XX, 6 bytes a byte), 19-digit counts in all
// three windows, and a 256-byte replica id escaped the same way.
func TestMergeLargestReport(t *testing.T) {
	for _, maxKeys := range []int{1, 3} {
		clk := newClock(base.Add(-30 * time.Second))
		a := New(Options{Now: clk.Now})
		b := New(Options{MaxKeys: maxKeys, Now: clk.Now})
		lim := Limit{PerMinute: math.MaxInt64, PerDay: math.MaxInt64}
		keys := make([]string, maxKeys)
		for i := range keys {
			keys[i] = strings.Repeat("<", 255) + string(rune(1+i))
			mustTake(t, a, keys[i], lim, 5e18) // the previous minute
		}
		clk.Set(base.Add(30 * time.Second))
		for _, k := range keys {
			mustTake(t, a, k, lim, 1e18) // this minute
		}
		rep := a.AppendReport(nil, strings.Repeat("<", 256))
		if !strings.Contains(string(rep), `\u003c`) || strings.Count(string(rep), `000000000000000000`) != 3*maxKeys {
			t.Fatalf("report %.200s…: want escaped keys and 19-digit counts", rep)
		}
		if err := b.Merge(rep, "b"); err != nil {
			t.Fatalf("MaxKeys %d: Merge of a %d-byte report: %v", maxKeys, len(rep), err)
		}
		if got := b.Take(keys[0], Limit{PerMinute: 100}, 1); got.Allowed || b.Len() != maxKeys {
			t.Errorf("MaxKeys %d: after Merge, Len %d, Take %+v; want %d keys, refused", maxKeys, b.Len(), got, maxKeys)
		}
	}
}

// TestReportDayOnly: with only a day quota, nothing is counted per minute
// and a report carries only day counts; the others still count them, in
// any minute of the same day.
func TestReportDayOnly(t *testing.T) {
	a, b, clk := pair(t, base.Add(10*time.Second))
	lim := Limit{PerDay: 100}
	mustTake(t, a, "k", lim, 60)
	rep := a.AppendReport(nil, "a")
	if got := decodeReport(t, rep).Counts; len(got) != 1 || !reflect.DeepEqual(got[0], reportCount{Key: "k", Day: 60}) {
		t.Fatalf("counts %+v; want only the day's 60", got)
	}
	clk.Set(base.Add(5 * time.Minute)) // merged minutes later, the same day
	if err := b.Merge(rep, "b"); err != nil {
		t.Fatal(err)
	}
	toMidnight := 12*time.Hour - 5*time.Minute
	if got, want := b.Take("k", lim, 41), (Decision{Layer: Day, Limit: 100, Remaining: 40, RetryAfter: toMidnight, Reset: toMidnight}); got != want {
		t.Fatalf("b after a's report: got %+v; want %+v", got, want)
	}
	mustTake(t, b, "k", lim, 40)
}

// TestReportTracksNothingForNothing: a report whose counts all fall
// outside the receiver's windows makes it track no identity (Stats.Keys,
// and a slot of MaxKeys), even when the report's minute is one of them.
func TestReportTracksNothingForNothing(t *testing.T) {
	// Only a day count, made in the last minute of yesterday and merged in
	// the first minute of today: that minute is the receiver's previous
	// one, but the day is over.
	midnight := time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC)
	a, b, clk := pair(t, midnight.Add(-30*time.Second))
	mustTake(t, a, "k", Limit{PerDay: 100}, 10)
	rep := a.AppendReport(nil, "a")
	clk.Set(midnight.Add(10 * time.Second))
	if err := b.Merge(rep, "b"); err != nil {
		t.Fatal(err)
	}
	if s := b.Stats(); s.Keys != 0 {
		t.Errorf("yesterday's day count: Stats() = %+v; want no key tracked", s)
	}

	// Only a minute count from a clock one minute ahead: the receiver has
	// not reached that minute, though it holds the one before it.
	a, b, clk = pair(t, base.Add(time.Minute+10*time.Second))
	mustTake(t, a, "k", Limit{PerMinute: 100}, 10)
	rep = a.AppendReport(nil, "a")
	clk.Set(base.Add(30 * time.Second))
	if err := b.Merge(rep, "b"); err != nil {
		t.Fatal(err)
	}
	if s := b.Stats(); s.Keys != 0 {
		t.Errorf("a count for a minute ahead: Stats() = %+v; want no key tracked", s)
	}
}
