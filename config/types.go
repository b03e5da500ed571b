package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ByteSize is a size in bytes. As text it is a whole number of bytes with an
// optional, case-insensitive unit: B, KB, MB, GB (powers of 1000) or KiB, MiB,
// GiB (powers of 1024), with or without a space before the unit, such as
// "1048576", "512MiB" or "10 kb". The zero value is zero bytes.
type ByteSize int64

// UnmarshalText parses text as described on [ByteSize]. It rejects fractions,
// negative numbers, unknown units and sizes that overflow int64, and leaves b
// unchanged on error.
func (b *ByteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	end := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(s)
	}
	digits, unit := s[:end], strings.TrimSpace(s[end:])
	switch {
	case strings.HasPrefix(s, "-"):
		return fmt.Errorf("invalid byte size %q: must not be negative", text)
	case digits == "":
		return fmt.Errorf("invalid byte size %q: want a whole number of bytes, optionally followed by a unit such as KiB, MiB or MB", text)
	}
	mult := unitBytes(unit)
	if mult == 0 {
		return fmt.Errorf("invalid byte size %q: unknown unit %q (want B, KB, MB, GB, KiB, MiB or GiB)", text, unit)
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return fmt.Errorf("invalid byte size %q: too large", text)
	}
	*b = ByteSize(n * mult)
	return nil
}

// String formats b in the largest unit that divides it exactly, such as
// "10MiB", "1MB" or "1000B", so that UnmarshalText reads a non-negative b
// back unchanged.
func (b ByteSize) String() string {
	for _, u := range []string{"GiB", "GB", "MiB", "MB", "KiB", "KB"} {
		if m := unitBytes(u); b != 0 && int64(b)%m == 0 {
			return strconv.FormatInt(int64(b)/m, 10) + u
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// unitBytes returns how many bytes one unit is (case-insensitive; "" means
// bytes), or 0 for an unknown unit.
func unitBytes(unit string) int64 {
	switch strings.ToLower(unit) {
	case "", "b":
		return 1
	case "kb":
		return 1e3
	case "mb":
		return 1e6
	case "gb":
		return 1e9
	case "kib":
		return 1 << 10
	case "mib":
		return 1 << 20
	case "gib":
		return 1 << 30
	}
	return 0
}

// Millis is a duration that reads a bare integer as milliseconds, as the
// original proxy's FLUSH_INTERVAL did, and anything else as a Go duration such
// as "1s" or "250ms". Convert it with time.Duration(m). The zero value is a
// zero duration.
type Millis time.Duration

// UnmarshalText parses text as described on [Millis] and leaves m unchanged
// on error. It accepts negative values; range checks are the caller's job.
func (m *Millis) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n > math.MaxInt64/int64(time.Millisecond) || n < math.MinInt64/int64(time.Millisecond) {
			return fmt.Errorf("invalid duration %q: too large", text)
		}
		*m = Millis(time.Duration(n) * time.Millisecond)
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (want whole milliseconds such as 1000, or a Go duration such as 1s or 250ms)", text)
	}
	*m = Millis(d)
	return nil
}

// String formats m as a Go duration, such as "1s" or "250ms".
func (m Millis) String() string {
	return time.Duration(m).String()
}
