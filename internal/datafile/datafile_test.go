package datafile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStemAtAnyLength: a valid name that fits with every suffix is its own
// stem; a longer one is shortened to fit, and two long names that differ
// only past the kept prefix get different stems.
func TestStemAtAnyLength(t *testing.T) {
	fits := strings.Repeat("f", MaxStem)
	long := strings.Repeat("l", 255)
	longer := strings.Repeat("l", 254) + "m" // differs only past the kept prefix
	if Stem(fits) != fits || Stem(long) == Stem(longer) || len(Stem(long)) > MaxStem {
		t.Errorf("stems: %d bytes kept whole: %v; long ones differ: %v", len(fits), Stem(fits) == fits, Stem(long) != Stem(longer))
	}
}

// TestStemNeverLeavesTheDirectory: whatever bytes a name holds (it
// should never be invalid, but a forged record could carry one), its stem
// is a plain file name.
func TestStemNeverLeavesTheDirectory(t *testing.T) {
	for _, ds := range []string{"../../../../tmp/x", "/etc/passwd", "a/b", ".", "..", "", "x\x00y", strings.Repeat("é", 200)} {
		s := Stem(ds)
		if s == "" || strings.ContainsAny(s, "/.\x00") || len(s) > MaxStem || s != filepath.Base(s) {
			t.Errorf("Stem(%q) = %q", ds, s)
		}
	}
}

// TestStemKeepsWhatIsReadable: a shortened stem starts with the name's
// letters, digits and underscores, in order and nothing else, at most 200
// of them, so an operator can still tell whose file it is.
func TestStemKeepsWhatIsReadable(t *testing.T) {
	neighbours := "`{@[/:" // the bytes just outside each kept range
	for ds, prefix := range map[string]string{
		neighbours + "azAZ09_" + neighbours: "azAZ09_",
		strings.Repeat("x", 300):            strings.Repeat("x", 200),
	} {
		s := Stem(ds)
		head, sum, ok := strings.Cut(s, "-")
		if !ok || head != prefix || len(sum) != 16 || strings.Trim(sum, "0123456789abcdef") != "" {
			t.Errorf("Stem(%q) = %q; want %q, '-' and 16 hex digits", ds, s, prefix)
		}
	}
}

// TestAppendFailureLeavesNoTornLine: an append whose write fails halfway
// is cut back out of the file and the failure is reported, so a retry
// appends whole lines after the ones already there.
func TestAppendFailureLeavesNoTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ds.ndjson")
	if err := os.WriteFile(path, []byte("{\"kept\":1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	_, err := Append(path, func(w io.Writer) error {
		if _, err := w.Write([]byte(`{"torn":`)); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("Append: got %v; want the write's error", err)
	}
	off, err := Append(path, func(w io.Writer) error { _, err := w.Write([]byte("{\"next\":2}\n")); return err })
	if err != nil || off != int64(len("{\"kept\":1}\n")) {
		t.Errorf("Append after a failure: offset %d, %v; want %d, nil", off, err, len("{\"kept\":1}\n"))
	}
	if got, _ := os.ReadFile(path); string(got) != "{\"kept\":1}\n{\"next\":2}\n" {
		t.Errorf("file holds %q; want the kept line and the next one only", got)
	}
}
