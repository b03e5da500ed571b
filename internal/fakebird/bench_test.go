package fakebird

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkServeEvents measures the handler alone (no network) so load tests
// know how cheap the fake is, with and without validation.
//
// Recommended CLI invocation:
//
//	go test -run '^$' -bench BenchmarkServeEvents -benchmem ./internal/fakebird
func BenchmarkServeEvents(b *testing.B) {
	line := `{"timestamp":"2024-01-01T00:00:00Z","user":"u-123","event":"page_view","props":{"path":"/a/b","n":42}}`
	for _, rows := range []int{1, 100, 10000} {
		body := []byte(strings.Repeat(line+"\n", rows))
		for _, noValidate := range []bool{false, true} {
			b.Run(fmt.Sprintf("rows=%d/novalidate=%t", rows, noValidate), func(b *testing.B) {
				fb := New(Options{NoValidate: noValidate, MaxRequests: 100})
				defer fb.Close()
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				for i := 0; b.Loop(); i++ {
					if i%1000 == 999 {
						fb.Reset() // keep retained rows bounded
					}
					req := httptest.NewRequest(http.MethodPost, "/v0/events?name=events", bytes.NewReader(body))
					req.Header.Set("Authorization", "Bearer t")
					w := httptest.NewRecorder()
					fb.ServeHTTP(w, req)
					if w.Code != http.StatusAccepted {
						b.Fatalf("status: got %d; want 202 (%s)", w.Code, w.Body)
					}
				}
				b.ReportMetric(float64(b.N*rows)/b.Elapsed().Seconds(), "rows/s")
			})
		}
	}
}
