package console

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
)

// maxErrorRunes is how much of a stream's last error the table shows: the
// row should still fit a wide terminal.
const maxErrorRunes = 60

// WriteTable writes st for a terminal: a totals line, then one aligned row
// per stream, ordered by datasource, client and token id. A stream is named
// datasource@client·tokenid, the parts it has: '@' and '·' are in neither a
// datasource nor a client name.
func WriteTable(w io.Writer, st Status) error {
	t := st.Totals
	fill := 0.0
	if t.BufferMaxEvents > 0 {
		fill = float64(t.BufferEvents) / float64(t.BufferMaxEvents)
	}
	if t.BufferMaxBytes > 0 {
		fill = max(fill, float64(t.BufferBytes)/float64(t.BufferMaxBytes))
	}
	// Two lines, so that each fits an 80-column terminal in the usual case.
	line := fmt.Sprintf("up %s  accepted %s/s  delivered %s/s  buffer %.1f%% (%s/%s events, %s/%s)  oldest %s\n"+
		"retries %s  dead letters %s  quarantined %s  drops %s  upstream %s",
		fmtAge(st.UptimeSeconds), fmtRate(t.AcceptedPerSecond), fmtRate(t.DeliveredPerSecond), 100*fill,
		fmtCount(t.BufferEvents), fmtCount(t.BufferMaxEvents), fmtBytes(t.BufferBytes), fmtBytes(t.BufferMaxBytes),
		fmtAge(t.OldestHeldSeconds), fmtCount(t.Retries), fmtCount(t.DeadLettered), fmtCount(t.Quarantined),
		fmtDrops(t.Dropped), fmtLatency(t.UpstreamLatencySeconds))
	if t.SpoolBacklogEvents != nil {
		line += "  spool backlog " + fmtCount(*t.SpoolBacklogEvents)
	}
	if _, err := fmt.Fprintf(w, "%s\n\n", line); err != nil {
		return err
	}

	streams := slices.Clone(st.Streams) // sorted here, not in the caller's Status
	slices.SortFunc(streams, func(a, b Stream) int {
		if c := strings.Compare(a.Datasource, b.Datasource); c != 0 {
			return c
		}
		if c := strings.Compare(a.Client, b.Client); c != 0 {
			return c
		}
		return strings.Compare(a.TokenID, b.TokenID)
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DATASOURCE\tHELD\tOLDEST\tACCEPTED\tDELIVERED\tQUAR\tDEAD\tDROPPED\tINFLIGHT\tLAST\tPAUSED\tLAST ERROR")
	for _, s := range streams {
		name := termSafe(s.Datasource)
		if s.Client != "" {
			name += "@" + termSafe(s.Client)
		}
		if s.TokenID != "" {
			name += "·" + termSafe(s.TokenID)
		}
		last, paused := "-", "-"
		if s.LastStatus != 0 {
			last = strconv.Itoa(s.LastStatus)
		}
		if s.Paused {
			paused = "paused"
		}
		errText := "-"
		if s.LastError != "" {
			errText = termTruncate(termSafe(s.LastError), maxErrorRunes)
		}
		fmt.Fprintf(tw, "%s\t%s (%s)\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n",
			name, fmtCount(s.HeldEvents), fmtBytes(s.HeldBytes), fmtAge(s.OldestSeconds),
			fmtCount(s.Accepted), fmtCount(s.Delivered), fmtCount(s.Quarantined), fmtCount(s.DeadLettered),
			fmtCount(s.Dropped), s.InFlightBatches, last, paused, errText)
	}
	if len(streams) == 0 {
		fmt.Fprintln(tw, "(no streams yet)")
	}
	return tw.Flush()
}

// termSafe makes text from clients or upstream safe for a terminal and for
// tabwriter: control characters (tabs, newlines, escape sequences) become
// spaces, runs of spaces one.
func termSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

func termTruncate(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return strings.TrimRight(string(r[:n-1]), " ") + "…"
	}
	return s
}

// fmtCount formats n with thousands separators: 1234567 → 1,234,567.
func fmtCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// fmtRate formats events per second with one decimal and thousands separators.
func fmtRate(f float64) string {
	tenths := int64(f*10 + 0.5)
	return fmtCount(tenths/10) + "." + strconv.FormatInt(tenths%10, 10)
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	f, i := float64(n), 0
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + []string{"", "KiB", "MiB", "GiB", "TiB"}[i]
}

// fmtAge formats seconds as a short age: 4.2s, 37s, 3m12s, 5h04m, 2d03h;
// "-" for none.
func fmtAge(s float64) string {
	switch {
	case s <= 0:
		return "-"
	case s < 10:
		return strconv.FormatFloat(s, 'f', 1, 64) + "s"
	}
	n := int64(s + 0.5)
	switch {
	case n < 60:
		return fmt.Sprintf("%ds", n)
	case n < 3600:
		return fmt.Sprintf("%dm%02ds", n/60, n%60)
	case n < 86400:
		return fmt.Sprintf("%dh%02dm", n/3600, n%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", n/86400, n%86400/3600)
}

// fmtDrops lists the non-zero drop reasons, most first: "overflow=3 shutdown=1",
// or "0".
func fmtDrops(m map[string]int64) string {
	var reasons []string
	for r, n := range m {
		if n > 0 {
			reasons = append(reasons, r)
		}
	}
	if len(reasons) == 0 {
		return "0"
	}
	slices.SortFunc(reasons, func(a, b string) int {
		if c := cmp.Compare(m[b], m[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	for i, r := range reasons {
		reasons[i] = termSafe(r) + "=" + fmtCount(m[r])
	}
	return strings.Join(reasons, " ")
}

// fmtLatency formats the mean upstream request time in milliseconds; "-" when
// no request was answered in the last minute.
func fmtLatency(s float64) string {
	if s <= 0 {
		return "-"
	}
	return strconv.FormatFloat(s*1000, 'f', 0, 64) + "ms"
}
