package main

// Tests of the wiring's own functions, in process. The tests that build and
// run the binary are in e2e/.

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/clients"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/proxy"
)

// TestRetainOnShutdownNeedsAStore: rows left at the shutdown timeout are
// kept for later only when a spool or a queue will deliver them; otherwise
// they are dead-lettered and counted. QUEUE_URL="," names no server and
// opens no queue, so it retains nothing.
func TestRetainOnShutdownNeedsAStore(t *testing.T) {
	for _, tt := range []struct {
		cfg  config.Config
		want bool
	}{
		{config.Config{}, false},
		{config.Config{QueueURL: ","}, false},
		{config.Config{QueueURL: "nats://127.0.0.1:4222"}, true},
		{config.Config{SpoolDir: "/var/lib/tbproxy"}, true},
	} {
		if got := flusherOptions(tt.cfg, nil).RetainOnShutdown; got != tt.want {
			t.Errorf("QUEUE_URL=%q SPOOL_DIR=%q: RetainOnShutdown %v; want %v", tt.cfg.QueueURL, tt.cfg.SpoolDir, got, tt.want)
		}
	}
}

// TestPassthroughOnlyToTinybird: the rest of the API is passed through to
// Tinybird only, read-only when the proxy is open; the file sink and
// ClickHouse have no API to pass through. The store given decides where
// requests are written, and an empty one leaves them to the buffer.
func TestPassthroughOnlyToTinybird(t *testing.T) {
	for _, tt := range []struct {
		environ map[string]string
		want    proxy.PassthroughOptions
	}{
		{map[string]string{"TINYBIRD_TOKEN": "p.up", "AUTHORIZATION_TOKEN": "c"},
			proxy.PassthroughOptions{BaseURL: "https://api.tinybird.co", Token: "p.up", Timeout: 30 * time.Second}},
		{map[string]string{"TINYBIRD_TOKEN": "p.up", "ALLOW_UNAUTHENTICATED": "true"},
			proxy.PassthroughOptions{BaseURL: "https://api.tinybird.co", Token: "p.up", Timeout: 30 * time.Second, ReadOnly: true}},
		// Named clients only: not open, so not read-only (a client with an
		// allow-list is refused the passthrough by the proxy itself).
		{map[string]string{"TINYBIRD_TOKEN": "p.up", "CLIENTS_FILE": "clients.json"},
			proxy.PassthroughOptions{BaseURL: "https://api.tinybird.co", Token: "p.up", Timeout: 30 * time.Second}},
		{map[string]string{"TINYBIRD_TOKEN": "p.up", "AUTHORIZATION_TOKEN": "c", "PASSTHROUGH": "false"}, proxy.PassthroughOptions{}},
		{map[string]string{"TINYBIRD_BASE_URL": "file://./events"}, proxy.PassthroughOptions{}},
		{map[string]string{"TINYBIRD_BASE_URL": "clickhouse://db/analytics", "AUTHORIZATION_TOKEN": "c"}, proxy.PassthroughOptions{}},
	} {
		cfg, err := config.Load(tt.environ)
		if err != nil {
			t.Fatal(err)
		}
		o := proxyOptions(cfg, nil, new(store), prometheus.NewRegistry())
		if o.Passthrough != tt.want {
			t.Errorf("%v: got %+v; want %+v", tt.environ, o.Passthrough, tt.want)
		}
		if o.Store != nil || o.IgnoreBufferFill || len(o.Ready) != 0 {
			t.Errorf("%v: with no spool or queue, got Store %v, IgnoreBufferFill %v, %d Ready checks; want none",
				tt.environ, o.Store, o.IgnoreBufferFill, len(o.Ready))
		}
	}
}

// TestBuildVersionLine: `tbproxy version` prints the module version, the
// commit cut to 12 characters, "(modified)" when the tree had uncommitted
// changes, and the toolchain; a binary built without VCS information (from
// a tarball, a build context without .git, or with -buildvcs=false) says
// "rev unknown". e2e's TestE2EImage runs a real build.
func TestBuildVersionLine(t *testing.T) {
	const rev = "11d841dcbe36d3ec0f127e5bdae80cac454767af"
	for _, tt := range []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want buildVersion
		line string
	}{
		{"git checkout", &debug.BuildInfo{GoVersion: "go1.26.8",
			Main: debug.Module{Path: "github.com/tbproxy/tbproxy", Version: "v0.0.0-20251205065100-11d841dcbe36"},
			Settings: []debug.BuildSetting{{Key: "-trimpath", Value: "true"}, {Key: "vcs", Value: "git"},
				{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "false"}}}, true,
			buildVersion{Module: "v0.0.0-20251205065100-11d841dcbe36", Revision: rev, Go: "go1.26.8"},
			"tbproxy v0.0.0-20251205065100-11d841dcbe36 rev 11d841dcbe36 go1.26.8"},
		{"modified", &debug.BuildInfo{GoVersion: "go1.26.8",
			Main:     debug.Module{Path: "github.com/tbproxy/tbproxy", Version: "v1.2.3+dirty"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "true"}}}, true,
			buildVersion{Module: "v1.2.3+dirty", Revision: rev, Modified: true, Go: "go1.26.8"},
			"tbproxy v1.2.3+dirty rev 11d841dcbe36 (modified) go1.26.8"},
		{"no VCS information", &debug.BuildInfo{GoVersion: "go1.26.8",
			Main: debug.Module{Path: "github.com/tbproxy/tbproxy", Version: "(devel)"}}, true,
			buildVersion{Module: "(devel)", Go: "go1.26.8"},
			"tbproxy (devel) rev unknown go1.26.8"},
		{"no build information", nil, false,
			buildVersion{Module: "(devel)", Go: runtime.Version()},
			"tbproxy (devel) rev unknown " + runtime.Version()},
	} {
		v := buildVersionOf(tt.bi, tt.ok)
		if v != tt.want {
			t.Errorf("%s: got %+v; want %+v", tt.name, v, tt.want)
		}
		if v.String() != tt.line {
			t.Errorf("%s: got %q; want %q", tt.name, v.String(), tt.line)
		}
	}
}

// TestWiringWritableDirs: before anything is opened, each directory the
// configuration writes to is created as its package would create it (never
// more open), a file is written and removed in it, and what is wrong is
// named with its variable. Permission errors are tested by e2e's
// TestE2EImage, as the image's unprivileged user; here only when the test
// itself runs unprivileged.
func TestWiringWritableDirs(t *testing.T) {
	base := t.TempDir()
	spool, dead, sink := filepath.Join(base, "a", "spool"), filepath.Join(base, "b", "dead"), filepath.Join(base, "c", "events")
	cfg, err := config.Load(map[string]string{"SPOOL_DIR": spool, "DEAD_LETTER_DIR": dead, "TINYBIRD_BASE_URL": "file://" + sink})
	if err != nil {
		t.Fatal(err)
	}
	if err := checkWritableDirs(cfg); err != nil {
		t.Fatal(err)
	}
	for dir, perm := range map[string]os.FileMode{spool: 0o700, dead: 0o750, sink: 0o755} {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() {
			t.Fatalf("%s: got %v, %v; want a directory", dir, fi, err)
		}
		if extra := fi.Mode().Perm() &^ perm; extra != 0 {
			t.Errorf("%s: mode %v; want at most %v", dir, fi.Mode().Perm(), perm)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("%s: the check left %v behind", dir, entries)
		}
	}

	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		environ map[string]string
		want    string
	}{
		{map[string]string{"SPOOL_DIR": file}, "SPOOL_DIR=" + file + ": directory is not a directory"},
		{map[string]string{"DEAD_LETTER_DIR": filepath.Join(file, "dead")},
			"DEAD_LETTER_DIR=" + filepath.Join(file, "dead") + ": directory does not exist and cannot be created by uid "},
		{map[string]string{"TINYBIRD_BASE_URL": "file://" + file},
			"TINYBIRD_BASE_URL=file://" + file + ": directory " + file + " is not a directory"},
	} {
		cfg, err := config.Load(tt.environ)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkWritableDirs(cfg); err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%v: got %v; want %q...", tt.environ, err, tt.want)
		}
	}

	if os.Geteuid() != 0 { // root writes anywhere
		ro := filepath.Join(base, "ro")
		if err := os.Mkdir(ro, 0o555); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(map[string]string{"SPOOL_DIR": ro})
		if err != nil {
			t.Fatal(err)
		}
		want := "SPOOL_DIR=" + ro + ": directory is not writable by uid "
		if err := checkWritableDirs(cfg); err == nil || !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), "permission denied") {
			t.Errorf("read-only SPOOL_DIR: got %v; want %q...permission denied", err, want)
		}
	}
}

// TestClientsFileRefusesTheAdminToken: a client whose token is ADMIN_TOKEN
// would hold the console's key; start-up and a reload refuse such a file,
// and a reload keeps the clients in force.
func TestClientsFileRefusesTheAdminToken(t *testing.T) {
	const admin = "admin-token-0123456789abcdef"
	path := filepath.Join(t.TempDir(), "clients.json")
	write := func(token string) {
		js := `{"clients":[{"name":"web","token_sha256":"` + clients.HashToken([]byte(token)) + `"}]}`
		if err := os.WriteFile(path, []byte(js), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Config{ClientsFile: path, AdminToken: admin}
	log := slog.New(slog.DiscardHandler)
	write(admin)
	if _, _, err := loadClients(cfg, log); err == nil || !strings.Contains(err.Error(), `client "web": token_sha256 is the digest of ADMIN_TOKEN`) {
		t.Fatalf("start-up: got %v; want the file refused", err)
	}
	write("web-token-0123456789")
	n, set, err := loadClients(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	var inForce *clients.Set
	n.set = func(s *clients.Set) { inForce = s }
	write(admin)
	n.reload("SIGHUP")
	if inForce != nil {
		t.Fatal("a reload put ADMIN_TOKEN's client in force")
	}
	if set.Lookup([]byte("web-token-0123456789")) == nil {
		t.Fatal("the set loaded at start lost its client")
	}
}
