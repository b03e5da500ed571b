// Package chtest runs a real, throwaway ClickHouse server for tests: its own
// configuration and data in a temporary directory, its HTTP interface on a
// free loopback port, killed at cleanup. It runs whatever clickhouse-server
// is installed (Debian's is 18.16), so tests use only what that version has.
//
// Without a server binary the calling test is skipped, unless the CI
// environment variable is set: then it fails, so CI cannot pass by skipping.
package chtest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The user the proxy writes as; the tests themselves query as "default",
// which has no password.
const (
	User     = "tbproxy_writer"
	Password = "ch-pass-4b7e19"
)

// Server is one running (or stopped) clickhouse-server. Its methods may be
// called from several goroutines.
type Server struct {
	t    testing.TB
	bin  []string // command and leading arguments
	dir  string
	port int

	mu   sync.Mutex    // protects cmd and done
	cmd  *exec.Cmd     // nil while stopped
	done chan struct{} // closed when cmd has exited
}

// Start runs a server and returns once it answers SELECT 1. The server is
// killed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := findBinary()
	if bin == nil {
		if os.Getenv("CI") != "" {
			t.Fatal("clickhouse-server not found (CI is set, so this fails instead of skipping): " +
				"apt-get install -y clickhouse-server")
		}
		t.Skip("clickhouse-server not installed (apt-get install -y clickhouse-server)")
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("clickhouse-server error log (tail):\n%s", s.errLogTail(4000))
		}
	})
	var err error
	for range 3 { // a free port can be taken between choosing it and binding it
		if s.port, err = freePort(); err != nil {
			t.Fatal(err)
		}
		if err = s.start(); err == nil {
			return s
		}
	}
	t.Fatalf("clickhouse-server did not start: %v\n%s", err, s.errLogTail(2000))
	return nil
}

// findBinary returns the command that runs a server, or nil.
func findBinary() []string {
	if p, err := exec.LookPath("clickhouse-server"); err == nil {
		return []string{p}
	}
	for _, p := range []string{"/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return []string{p}
		}
	}
	for _, p := range []string{"clickhouse", "/usr/bin/clickhouse"} {
		if p, err := exec.LookPath(p); err == nil {
			return []string{p, "server"}
		}
	}
	return nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// config is the server's whole configuration: HTTP only (no native or
// interserver port), loopback only, query_log flushed often so tests can
// count inserts, and two users.
const config = `<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{{dir}}/server.log</log>
    <errorlog>{{dir}}/server.err.log</errorlog>
    <console>0</console>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{{port}}</http_port>
  <path>{{dir}}/data/</path>
  <tmp_path>{{dir}}/tmp/</tmp_path>
  <user_files_path>{{dir}}/user_files/</user_files_path>
  <format_schema_path>{{dir}}/format_schemas/</format_schema_path>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <keep_alive_timeout>3</keep_alive_timeout>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <query_log>
    <database>system</database>
    <table>query_log</table>
    <flush_interval_milliseconds>200</flush_interval_milliseconds>
  </query_log>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
    <` + User + `>
      <password>` + Password + `</password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </` + User + `>
  </users>
  <profiles><default><log_queries>1</log_queries></default></profiles>
  <quotas><default></default></quotas>
</yandex>
`

// start runs the server on s.port and waits (at most 30s) until it answers.
func (s *Server) start() error {
	cfg := strings.NewReplacer("{{dir}}", s.dir, "{{port}}", strconv.Itoa(s.port)).Replace(config)
	path := filepath.Join(s.dir, "config.xml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(s.bin[0], append(s.bin[1:], "--config-file="+path)...)
	cmd.Dir = s.dir
	out, err := os.OpenFile(filepath.Join(s.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for attempt := 0; attempt < 600 && time.Now().Before(deadline); attempt++ {
		if got, err := s.Query("SELECT 1"); err == nil && strings.TrimSpace(got) == "1" {
			return nil
		}
		select {
		case <-done:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("clickhouse-server exited: %s", cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.Kill()
	return errors.New("clickhouse-server did not answer SELECT 1 within 30s")
}

// Addr is the HTTP interface's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is the TINYBIRD_BASE_URL that points the proxy at database, as User
// with Password in the URL.
func (s *Server) URL(database string) string {
	return "clickhouse://" + User + ":" + Password + "@" + s.Addr() + "/" + database
}

// Query runs sql as the default user and returns the answer
// (TabSeparated unless sql says otherwise).
func (s *Server) Query(sql string) (string, error) {
	// A fresh connection per query: clickhouse-server may close an idle
	// keep-alive one just as a reused one is written to, and the query
	// then fails with EOF (seen in CI after a refused INSERT).
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Post("http://"+s.Addr()+"/?"+url.Values{"user": {"default"}}.Encode(), "text/plain", strings.NewReader(sql))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("clickhouse %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

// MustQuery is Query that fails t on error.
func (s *Server) MustQuery(t testing.TB, sql string) string {
	t.Helper()
	out, err := s.Query(sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// Kill stops the server at once (SIGKILL), as a crash would, and waits
// for it to exit. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Restart starts a stopped server again on the same port, with the same
// data, and fails t if it does not come up. The port may be briefly taken
// by another process, so it tries for up to 10 seconds.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 0; attempt < 20 && time.Now().Before(deadline); attempt++ {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond) // waiting for the port: nothing to wake us sooner
	}
	t.Fatalf("clickhouse-server did not restart on port %d: %v\n%s", s.port, err, s.errLogTail(2000))
}

// errLogTail returns the last n bytes of the server's error log.
func (s *Server) errLogTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "server.err.log"))
	if o, _ := os.ReadFile(filepath.Join(s.dir, "stdout.log")); len(o) > 0 {
		b = append(b, o...)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
