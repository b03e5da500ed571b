package config

import (
	"strings"
	"testing"
	"time"
)

func TestByteSizeUnmarshalText(t *testing.T) {
	t.Parallel()
	f := func(in string, want ByteSize) {
		t.Helper()
		var got ByteSize
		if err := got.UnmarshalText([]byte(in)); err != nil {
			t.Errorf("UnmarshalText(%q): %v", in, err)
			return
		}
		if got != want {
			t.Errorf("UnmarshalText(%q): got %d; want %d", in, got, want)
		}
	}
	f("0", 0)
	f("1024", 1024)
	f("7B", 7)
	f("1KB", 1000)
	f("1kb", 1000)
	f("2MB", 2e6)
	f("3GB", 3e9)
	f("1KiB", 1<<10)
	f("10MiB", 10<<20)
	f("10mib", 10<<20)
	f("10 MiB", 10<<20)
	f(" 4GiB ", 4<<30)
	f("8589934591GiB", 8589934591<<30) // just fits in int64
}

func TestByteSizeUnmarshalTextErrors(t *testing.T) {
	t.Parallel()
	f := func(in, want string) {
		t.Helper()
		b := ByteSize(42)
		err := b.UnmarshalText([]byte(in))
		if err == nil {
			t.Errorf("UnmarshalText(%q): got nil error; want %q", in, want)
			return
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("UnmarshalText(%q): got %q; want %q", in, err, want)
		}
		if b != 42 {
			t.Errorf("UnmarshalText(%q) changed the value to %d", in, b)
		}
	}
	f("", "want a whole number of bytes")
	f("MiB", "want a whole number of bytes")
	f("1.5GiB", `unknown unit ".5GiB"`)
	f("12XB", `unknown unit "XB"`)
	f("10M", `unknown unit "M"`)
	f("-1", "must not be negative")
	f("+1", "want a whole number of bytes")
	f("8589934592GiB", "too large")
	f("99999999999999999999", "too large")
}

func TestByteSizeString(t *testing.T) {
	t.Parallel()
	f := func(b ByteSize, want string) {
		t.Helper()
		got := b.String()
		if got != want {
			t.Errorf("got %q; want %q", got, want)
		}
		var back ByteSize
		if err := back.UnmarshalText([]byte(got)); err != nil || back != b {
			t.Errorf("round trip of %q: got %d, %v; want %d", got, back, err, b)
		}
	}
	f(0, "0B")
	f(1, "1B")
	f(1000, "1KB")
	f(1024, "1KiB")
	f(1536, "1536B")
	f(3000, "3KB")
	f(10<<20, "10MiB")
	f(512<<20, "512MiB")
	f(5e9, "5GB")
	f(2<<30, "2GiB")
}

func TestMillisUnmarshalText(t *testing.T) {
	t.Parallel()
	f := func(in string, want time.Duration) {
		t.Helper()
		var got Millis
		if err := got.UnmarshalText([]byte(in)); err != nil {
			t.Errorf("UnmarshalText(%q): %v", in, err)
			return
		}
		if time.Duration(got) != want {
			t.Errorf("UnmarshalText(%q): got %q; want %q", in, got, Millis(want))
		}
	}
	f("1000", time.Second)
	f("1", time.Millisecond)
	f("0", 0)
	f("-5", -5*time.Millisecond)
	f("1s", time.Second)
	f("250ms", 250*time.Millisecond)
	f("1.5s", 1500*time.Millisecond)
	f(" 2m ", 2*time.Minute)
}

func TestMillisUnmarshalTextErrors(t *testing.T) {
	t.Parallel()
	f := func(in, want string) {
		t.Helper()
		m := Millis(42)
		err := m.UnmarshalText([]byte(in))
		if err == nil {
			t.Errorf("UnmarshalText(%q): got nil error; want %q", in, want)
			return
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("UnmarshalText(%q): got %q; want %q", in, err, want)
		}
		if m != 42 {
			t.Errorf("UnmarshalText(%q) changed the value to %d", in, m)
		}
	}
	f("", `invalid duration ""`)
	f("abc", `invalid duration "abc"`)
	f("1.5", `invalid duration "1.5"`)
	f("10 s", `invalid duration "10 s"`)
	f("9223372036855", "too large")
}

func TestMillisString(t *testing.T) {
	t.Parallel()
	f := func(m Millis, want string) {
		t.Helper()
		if got := m.String(); got != want {
			t.Errorf("got %q; want %q", got, want)
		}
	}
	f(Millis(time.Second), "1s")
	f(Millis(250*time.Millisecond), "250ms")
	f(0, "0s")
}
