package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tbproxy/tbproxy/internal/fakebird"
)

// runReplay runs `tbproxy replay args...` to completion and returns its
// exit status and stderr.
func runReplay(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	cmd, stderr := command(t, env)
	cmd.Args = append([]string{cmd.Path, "replay"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { <-ctx.Done(); _ = cmd.Process.Kill() }()
	_ = cmd.Wait()
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// TestE2EReplay: a dead-letter file is sent back through the normal upstream
// path to the datasource its name gives; on failure the exit status says so
// and the file is left as it was.
func TestE2EReplay(t *testing.T) {
	t.Parallel()
	lines := []string{`{"a":1,"s":"Zürich"}`, `{"a":2,"big":12345678901234567890123}`, `  {"a":3}  `}
	file := filepath.Join(t.TempDir(), "page_views.ndjson")
	content := lines[0] + "\n" + lines[1] + "\n\n" + lines[2] + "\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}

	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	env := map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "FLUSH_INTERVAL": "50", "LOG_FORMAT": "json"}
	if code, stderr := runReplay(t, env, file); code != 0 {
		t.Fatalf("replay exited %d; want 0\n%s", code, stderr)
	}
	var got []string
	for _, r := range fb.RowsFor("page_views") {
		got = append(got, string(r.Line))
	}
	if !slices.Equal(got, lines) {
		t.Errorf("upstream got %q; want %q byte-identical", got, lines)
	}

	refusing := fakebird.NewTB(t, fakebird.Options{})
	refusing.SetFault(fakebird.Always(fakebird.Response{Status: 400}))
	env["TINYBIRD_BASE_URL"] = refusing.URL()
	code, stderr := runReplay(t, env, "-datasource", "other", file)
	if code != 1 {
		t.Errorf("replay into a refusing upstream exited %d; want 1\n%s", code, stderr)
	}
	if after, _ := os.ReadFile(file); string(after) != content {
		t.Errorf("replay changed the file it read")
	}
	assertNoSecrets(t, stderr, upstreamToken)

	delete(env, "TINYBIRD_TOKEN")
	if code, _ := runReplay(t, env, file); code != 2 {
		t.Errorf("replay without TINYBIRD_TOKEN exited %d; want 2", code)
	}
}
