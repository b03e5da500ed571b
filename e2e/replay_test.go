package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// TestE2EReplayChecksTheWholeFileFirst: a file with a bad line anywhere (not
// a JSON object, or longer than MAX_BODY_BYTES) is refused before anything
// is sent, so rerunning it after a fix duplicates nothing; a -datasource
// that is not a datasource name is refused too, and writes nothing.
func TestE2EReplayChecksTheWholeFileFirst(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fb := fakebird.NewTB(t, fakebird.Options{Tokens: []string{upstreamToken}})
	env := map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken, "FLUSH_INTERVAL": "50",
		"LOG_FORMAT": "json", "MAX_BODY_BYTES": "1KiB", "BUFFER_SIZE": "1000", "REQUEST_MEMORY_BYTES": "1MiB"}
	good := strings.Repeat(`{"a":1}`+"\n", 1500) // more than one batch of 1000
	for name, content := range map[string]string{
		"bad_json.ndjson": good + "not json\n",
		"long.ndjson":     good + `{"pad":"` + strings.Repeat("x", 2000) + `"}` + "\n",
	} {
		file := filepath.Join(dir, name)
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		code, stderr := runReplay(t, env, file)
		if code != 2 || !strings.Contains(stderr, "nothing was sent") || !strings.Contains(stderr, "line 1501") {
			t.Errorf("%s: exit %d, %s; want 2 naming line 1501", name, code, stderr)
		}
	}
	if n := fb.RequestCount(); n != 0 {
		t.Errorf("upstream got %d requests from files refused before sending", n)
	}
	sink := filepath.Join(dir, "sink")
	file := filepath.Join(dir, "ok.ndjson")
	os.WriteFile(file, []byte(`{"a":1}`+"\n"), 0o600)
	code, _ := runReplay(t, map[string]string{"TINYBIRD_BASE_URL": "file://" + sink}, "-datasource", "../x", file)
	if code != 2 {
		t.Errorf("-datasource ../x: exit %d; want 2", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.ndjson")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("-datasource ../x wrote outside the sink (%v)", err)
	}
}
