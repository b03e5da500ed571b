package proxy

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tbproxy/tbproxy/buffer"
)

var update = flag.Bool("update", false, "rewrite testdata/events/*.golden from the current behaviour")

// TestGolden posts every testdata/events/<case>.ndjson to a real server.
// good_* cases must be accepted and stored exactly as <case>.golden (the
// NDJSON upstream will get); bad_* cases must be refused with 400 and the
// JSON error in <case>.golden, storing nothing.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("../testdata/events/*.ndjson")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test cases in ../testdata/events: %v", err)
	}
	ts := startServer(t, Options{}, buffer.Options{})
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".ndjson")
		t.Run(name, func(t *testing.T) {
			body, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			res := ts.do(t, "POST", "/v0/events?name=ds", nil, body)
			stored, _ := ts.stored()
			got, wantStatus := stored, 202
			if strings.HasPrefix(name, "bad_") {
				got, wantStatus = res.body+"\n", 400
				if stored != "" {
					t.Errorf("a refused request stored %q", stored)
				}
			}
			if res.status != wantStatus {
				t.Errorf("status: got %d; want %d (body %s)", res.status, wantStatus, res.body)
			}
			golden := strings.TrimSuffix(file, ".ndjson") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./proxy -run TestGolden -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("got %q; want %q", got, want)
			}
		})
	}
}
