package buffer

import (
	"errors"
	"strings"
	"testing"
	"unsafe"
)

// TestKeyBytesCount: each distinct datasource name and token held costs its
// length once against MaxBytes, shared by every entry of that key, and is
// given back when the key's last event is released.
func TestKeyBytesCount(t *testing.T) {
	b := New(Options{MaxEvents: 100, MaxBytes: 2000})
	tok := strings.Repeat("t", 1000)
	k := Key{Token: tok, Datasource: "ds"}
	if err := b.Put(k, lines(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(Key{Token: strings.Clone(tok), Datasource: "ds"}, lines(`{}`)); err != nil {
		t.Fatal(err)
	}
	if got := b.Stats().Bytes; got != 2*3+1000+2 {
		t.Fatalf("two entries of one key: %d bytes held; want the lines and the key once (1008)", got)
	}
	// A second 1000-byte token does not fit beside the first: 1008+1003 > 2000.
	if err := b.Put(Key{Token: strings.Repeat("u", 1000), Datasource: "ds"}, lines(`{}`)); !errors.Is(err, ErrFull) {
		t.Fatalf("a second big token: got %v; want ErrFull", err)
	}
	got := b.Take(nil)
	if unsafe.StringData(got[0].Key.Token) != unsafe.StringData(got[1].Key.Token) {
		t.Error("two entries of one token hold two copies of it")
	}
	for _, e := range got {
		b.Release(e.Key, e.Rows, e.Data)
	}
	if s := b.Stats(); s.Bytes != 0 || s.Events != 0 {
		t.Fatalf("after releasing every entry: %+v; want nothing held", s)
	}
	if err := b.Put(Key{Token: strings.Repeat("u", 1000), Datasource: "ds"}, lines(`{}`)); err != nil {
		t.Fatalf("the other token once the first was released: %v", err)
	}
}

// TestMaxDatasourcesHeld: the cap counts names held now; a released name is
// forgotten, and ErrTooManyDatasources wraps ErrFull so stores that wait for
// room wait for it too.
func TestMaxDatasourcesHeld(t *testing.T) {
	b := New(Options{MaxEvents: 100, MaxBytes: 1000, MaxDatasources: 1})
	if err := b.Put(Key{Datasource: "a"}, lines(`{}`)); err != nil {
		t.Fatal(err)
	}
	err := b.Put(Key{Datasource: "b"}, lines(`{}`))
	if !errors.Is(err, ErrTooManyDatasources) || !errors.Is(err, ErrFull) {
		t.Fatalf("second name: got %v; want ErrTooManyDatasources, an ErrFull", err)
	}
	if err := b.Put(Key{Datasource: "a"}, lines(`{}`)); err != nil {
		t.Fatalf("a held name: %v", err)
	}
	for _, e := range b.Take(nil) {
		b.Release(e.Key, e.Rows, e.Data)
	}
	if err := b.Put(Key{Datasource: "b"}, lines(`{}`)); err != nil {
		t.Fatalf("second name once the first is gone: %v", err)
	}
}

// TestAdmissionCountsTheWholeRequest: a request is admitted only if all of
// its events and bytes fit beside what is held, never past the limits, even
// when what is held alone is under them.
func TestAdmissionCountsTheWholeRequest(t *testing.T) {
	b := New(Options{MaxEvents: 10, MaxBytes: 1 << 20})
	eight := lines(`{}`, `{}`, `{}`, `{}`, `{}`, `{}`, `{}`, `{}`)
	if err := b.Put(Key{Datasource: "ds"}, eight); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(Key{Datasource: "ds"}, lines(`{}`, `{}`, `{}`)); !errors.Is(err, ErrFull) {
		t.Fatalf("8 held, 3 more of 10: got %v; want ErrFull", err)
	}
	if err := b.Put(Key{Datasource: "ds"}, lines(`{}`, `{}`)); err != nil {
		t.Fatalf("8 held, 2 more of 10: got %v; want them admitted", err)
	}
	by := New(Options{MaxEvents: 100, MaxBytes: 100})
	if err := by.Put(Key{Datasource: "d"}, lines(strings.Repeat("x", 80))); err != nil { // 81 + 1 bytes
		t.Fatal(err)
	}
	if err := by.Put(Key{Datasource: "d"}, lines(strings.Repeat("x", 20))); !errors.Is(err, ErrFull) {
		t.Fatalf("82 bytes held, 21 more of 100: got %v; want ErrFull", err)
	}
	if s := by.Stats(); s.Bytes > 100 || b.Stats().Events > 10 {
		t.Errorf("held past the limits: %+v, %+v", s, b.Stats())
	}
}

// TestLimitsAreInclusive: a buffer takes exactly its limits, and a request
// of exactly the limits is not too large.
func TestLimitsAreInclusive(t *testing.T) {
	b := New(Options{MaxEvents: 3, MaxBytes: 9})
	if err := b.Put(Key{}, lines(`{}`, `{}`, `{}`)); err != nil { // 3 events, 9 bytes
		t.Fatalf("a request of exactly the limits: %v", err)
	}
	if err := b.Put(Key{}, lines(`{}`)); !errors.Is(err, ErrFull) {
		t.Fatalf("one more: got %v; want ErrFull", err)
	}
	if err := b.Put(Key{}, lines(`{}`, `{}`, `{}`, `{}`)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("4 events in a buffer of 3: got %v; want ErrTooLarge", err)
	}
	if err := b.Put(Key{}, lines(`{"a":1}`, `{}`)); !errors.Is(err, ErrTooLarge) { // 11 bytes
		t.Fatalf("11 bytes in a buffer of 9: got %v; want ErrTooLarge", err)
	}
}

// TestUnverifiedTokensHeld: MaxUnverifiedTokens counts distinct tokens held
// now that are not verified; a held token's later entries pass, a verified
// one is exempt, and a released one stops counting.
func TestUnverifiedTokensHeld(t *testing.T) {
	b := New(Options{MaxEvents: 100, MaxBytes: 1 << 20, MaxUnverifiedTokens: 2})
	put := func(tok string) error { return b.Put(Key{Token: tok, Datasource: "ds"}, lines(`{}`)) }
	for _, tok := range []string{"t1", "t2", "t1"} {
		if err := put(tok); err != nil {
			t.Fatalf("%s: %v", tok, err)
		}
	}
	if err := put("t3"); !errors.Is(err, ErrTooManyTokens) || !errors.Is(err, ErrFull) {
		t.Fatalf("third unverified token: got %v; want ErrTooManyTokens, an ErrFull", err)
	}
	b.Verify("t1")
	if err := put("t3"); err != nil {
		t.Fatalf("t3 once t1 is verified: %v", err)
	}
	if err := put("t4"); !errors.Is(err, ErrTooManyTokens) {
		t.Fatalf("t4 with t2 and t3 unverified: got %v", err)
	}
	for _, e := range b.Take(nil) {
		if e.Key.Token == "t2" {
			b.Release(e.Key, e.Rows, e.Data)
		}
	}
	if err := put("t4"); err != nil {
		t.Fatalf("t4 once t2 was released: %v", err)
	}
	if err := put("t5"); !errors.Is(err, ErrTooManyTokens) {
		t.Fatalf("t5 with t3 and t4 unverified: got %v", err)
	}
	b.Verify("t5") // accepted upstream before it was held: exempt on arrival
	if err := put("t5"); err != nil {
		t.Fatalf("verified t5: %v", err)
	}
	b2 := New(Options{MaxEvents: 100, MaxBytes: 1 << 20}) // no cap
	for i := range 50 {
		if err := b2.Put(Key{Token: strings.Repeat("t", i+1), Datasource: "ds"}, lines(`{}`)); err != nil {
			t.Fatalf("no cap: %v", err)
		}
	}
}

// TestTooLargeCountsTheKey: a request that fits the byte limit only without
// its key's name and token can never be admitted: ErrTooLarge (413), not
// ErrFull (a 429 the client would retry forever).
func TestTooLargeCountsTheKey(t *testing.T) {
	b := New(Options{MaxEvents: 100, MaxBytes: 100})
	line := strings.Repeat("x", 97) // 98 bytes with its newline
	if err := b.Put(Key{Token: "tok", Datasource: "ds"}, lines(line)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("98 bytes and a 5-byte key in 100: got %v; want ErrTooLarge", err)
	}
	if err := b.Put(Key{Datasource: "d"}, lines(strings.Repeat("x", 98))); err != nil { // 99 + 1
		t.Fatalf("99 bytes and a 1-byte key in 100: %v", err)
	}
}

// TestNameHeldUntilItsLastEvent: a datasource with events in two entries
// stays held (and charged) until both are released, then is forgotten.
func TestNameHeldUntilItsLastEvent(t *testing.T) {
	b := New(Options{MaxEvents: 100, MaxBytes: 1000, MaxDatasources: 1})
	k := Key{Datasource: "abcdefghij"} // 10 bytes
	for range 2 {
		if err := b.Put(k, lines(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	got := b.Take(nil)
	b.Release(got[0].Key, got[0].Rows, got[0].Data)
	if s := b.Stats(); s.Bytes != 3+10 {
		t.Errorf("one of two entries released: %d bytes held; want the other's 3 and the name's 10", s.Bytes)
	}
	if err := b.Put(Key{Datasource: "other"}, lines(`{}`)); !errors.Is(err, ErrTooManyDatasources) {
		t.Errorf("a second name while the first still holds an event: got %v; want ErrTooManyDatasources", err)
	}
	b.Release(got[1].Key, got[1].Rows, got[1].Data)
	if s := b.Stats(); s.Bytes != 0 {
		t.Errorf("everything released: %d bytes held; want 0", s.Bytes)
	}
	if err := b.Put(Key{Datasource: "other"}, lines(`{}`)); err != nil {
		t.Errorf("a second name once the first is forgotten: %v", err)
	}
}
