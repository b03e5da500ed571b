package console

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

func tableStatus() Status {
	backlog := int64(42)
	delivered := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	return Status{
		UptimeSeconds: 3725,
		Totals: Totals{
			AcceptedPerSecond: 1234.56, DeliveredPerSecond: 1200,
			Accepted: 5_000_000, Delivered: 4_990_000, DeadLettered: 7, Retries: 3,
			Dropped:      map[string]int64{"overflow": 12, "shutdown": 0},
			BufferEvents: 2500, BufferMaxEvents: 10000, BufferBytes: 1 << 20, BufferMaxBytes: 64 << 20,
			OldestHeldSeconds: 4.2, UpstreamLatencySeconds: 0.0451, SpoolBacklogEvents: &backlog,
		},
		// Deliberately out of order: the table sorts.
		Streams: []Stream{
			{Datasource: "page_views", TokenID: "ffff0000", Accepted: 10, LastStatus: 200},
			{Datasource: "page_views", TokenID: "1a2b3c4d", HeldEvents: 1234, HeldBytes: 2048, OldestSeconds: 75,
				Accepted: 1_234_567, Delivered: 1_233_333, Quarantined: 2, DeadLettered: 5, Dropped: 9,
				InFlightBatches: 3, LastStatus: 503, Paused: true, LastDelivery: &delivered,
				LastError: "upstream answered 503:\tService\nUnavailable \x1b[31mretry later\x1b[0m " + strings.Repeat("x", 100)},
			{Datasource: "clicks", Accepted: 1},
			// Two named clients of one datasource are two rows; a client
			// sorts after the datasource, before the token id.
			{Datasource: "clicks", Client: "web", Accepted: 2},
			{Datasource: "clicks", Client: "api-worker", Accepted: 3},
			{Datasource: "page_views", Client: "web\x1b[2J", TokenID: "1a2b3c4d", Accepted: 4},
		},
	}
}

func TestWriteTable(t *testing.T) {
	var b strings.Builder
	if err := WriteTable(&b, tableStatus()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	for _, want := range []string{
		"up 1h02m", "accepted 1,234.6/s", "delivered 1,200.0/s", "buffer 25.0% (2,500/10,000 events",
		"oldest 4.2s", "retries 3", "dead letters 7", "drops overflow=12", "upstream 45ms", "spool backlog 42",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("totals lack %q", want)
		}
	}
	if strings.Contains(out, "shutdown") {
		t.Error("a zero drop reason is listed")
	}

	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	head := tableLineIndex(lines, "DATASOURCE")
	if head < 0 || len(lines) != head+7 {
		t.Fatalf("want a header and 6 rows, got:\n%s", out)
	}
	rows := lines[head+1:]
	for i, prefix := range []string{
		"clicks ", "clicks@api-worker ", "clicks@web ",
		"page_views·1a2b3c4d ", "page_views·ffff0000 ", "page_views@web [2J·1a2b3c4d ",
	} {
		if !strings.HasPrefix(rows[i], prefix) {
			t.Errorf("row %d = %q, want it to start with %q", i, rows[i], prefix)
		}
	}
	for i, accepted := range []string{" 1 ", " 3 ", " 2 "} {
		if !strings.Contains(rows[i], accepted) {
			t.Errorf("row %q lacks its accepted count %q", rows[i], accepted)
		}
	}
	busy := rows[3]
	for _, want := range []string{"1,234 (2.0 KiB)", "1m15s", "1,234,567", "1,233,333", "503", "paused", "upstream answered 503: Service Unavailable [31mretry"} {
		if !strings.Contains(busy, want) {
			t.Errorf("row %q lacks %q", busy, want)
		}
	}
	// The error is cut, and its tabs, newlines and escapes did not break the
	// columns: it starts where the header says.
	if !strings.HasSuffix(busy, "…") || strings.Contains(busy, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") {
		t.Errorf("long error not truncated: %q", busy)
	}
	if strings.ContainsAny(out, "\t\x1b") {
		t.Error("control characters reach the terminal")
	}
	col := strings.Index(lines[head], "LAST ERROR")
	if got := strings.Index(busy, "upstream"); len([]rune(busy[:got])) != col {
		t.Errorf("LAST ERROR column at %d, error text at rune %d", col, len([]rune(busy[:got])))
	}
	// The token id is the only token-like thing shown.
	if m := regexp.MustCompile(`[0-9a-f]{9,}|(?i:bearer|token)`).FindString(out); m != "" {
		t.Errorf("table shows %q", m)
	}
}

func TestWriteTableEmpty(t *testing.T) {
	var b strings.Builder
	if err := WriteTable(&b, Status{}); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "(no streams yet)") || !strings.Contains(out, "buffer 0.0%") {
		t.Errorf("empty status:\n%s", out)
	}
}

func TestFormatters(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{fmtCount(0), "0"}, {fmtCount(999), "999"}, {fmtCount(1000), "1,000"}, {fmtCount(-1234567), "-1,234,567"},
		{fmtRate(0.04), "0.0"}, {fmtRate(1999.96), "2,000.0"},
		{fmtBytes(1023), "1023 B"}, {fmtBytes(1536), "1.5 KiB"}, {fmtBytes(3 << 30), "3.0 GiB"},
		{fmtAge(0), "-"}, {fmtAge(59.6), "1m00s"}, {fmtAge(90061), "1d01h"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func tableLineIndex(lines []string, prefix string) int {
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return i
		}
	}
	return -1
}
