// Package natstest runs real, throwaway NATS servers with JetStream for
// tests: one server, or a cluster of several on loopback ports, each with
// its own configuration and store in a temporary directory, killed at
// cleanup. It runs whatever nats-server is installed (Debian's is 2.9), so
// tests use only what that version has.
//
// Without a server binary the calling test is skipped, unless the CI
// environment variable is set: then it fails, so CI cannot pass by skipping.
package natstest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is one nats-server process, running or stopped. Its ports and
// store directory stay the same across Stop and Start. Safe for concurrent
// use.
type Server struct {
	t       testing.TB
	bin     string
	name    string
	dir     string
	port    int // client port
	monitor int // HTTP monitoring port, for /healthz
	config  string

	mu   sync.Mutex    // protects cmd and done
	cmd  *exec.Cmd     // nil while stopped
	done chan struct{} // closed when cmd has exited
}

// Cluster is several servers joined by routes, JetStream in each.
type Cluster struct {
	Servers []*Server
}

// Start runs one server with JetStream and returns once it is healthy. It is
// killed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartStock(t, false)
}

// StartStock is Start; with stock set, the server keeps nats-server's
// default max_payload (1 MB) instead of one above the proxy's default
// MAX_BODY_BYTES.
func StartStock(t testing.TB, stock bool) *Server {
	t.Helper()
	bin := binary(t)
	for attempt := 0; ; attempt++ { // a free port can be taken before the server binds it
		ports, err := freePorts(2)
		if err != nil {
			t.Fatal(err)
		}
		s := newServer(t, bin, "n1", ports[0], ports[1], "")
		if stock {
			s.config = strings.Replace(s.config, "max_payload: 12MB\n", "", 1)
		}
		if err = s.start(); err == nil {
			return s
		}
		if attempt == 2 {
			t.Fatalf("nats-server did not start: %v\n%s", err, s.logTail())
		}
	}
}

// StartCluster runs n servers (n >= 3 for JetStream replication) that route
// to each other, and returns once every one is healthy.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := binary(t)
	ports, err := freePorts(3 * n)
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[3*i+2]))
	}
	c := &Cluster{}
	for i := range n {
		cl := fmt.Sprintf("cluster {\n  name: tbtest\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n",
			ports[3*i+2], strings.Join(routes, ", "))
		c.Servers = append(c.Servers, newServer(t, bin, fmt.Sprintf("n%d", i+1), ports[3*i], ports[3*i+1], cl))
	}
	// Start them all before waiting: JetStream in a cluster is healthy
	// only once a meta leader is elected, which needs a quorum.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, s := range c.Servers {
		wg.Go(func() { errs[i] = s.start() })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("nats-server %s did not start: %v\n%s", c.Servers[i].name, err, c.Servers[i].logTail())
		}
	}
	return c
}

// URLs returns every server's client URL, comma-separated, as QUEUE_URL
// takes them.
func (c *Cluster) URLs() string {
	var urls []string
	for _, s := range c.Servers {
		urls = append(urls, s.URL())
	}
	return strings.Join(urls, ",")
}

func binary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"} {
		if p, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("nats-server not found (CI is set, so this fails instead of skipping): apt-get install -y nats-server")
	}
	t.Skip("nats-server not installed (apt-get install -y nats-server)")
	return ""
}

func newServer(t testing.TB, bin, name string, port, monitor int, cluster string) *Server {
	dir := t.TempDir()
	s := &Server{t: t, bin: bin, name: name, dir: dir, port: port, monitor: monitor}
	// max_payload above the proxy's default MAX_BODY_BYTES (10 MiB), so a
	// whole request fits in one message.
	s.config = fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\nmax_payload: 12MB\n"+
		"jetstream {\n  store_dir: %q\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}\n%s",
		name, port, monitor, filepath.Join(dir, "js"), cluster)
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("nats-server %s log (tail):\n%s", s.name, s.logTail())
		}
	})
	return s
}

// URL is the server's client URL, nats://127.0.0.1:<port>.
func (s *Server) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

// Name is the server's name (n1, n2, …).
func (s *Server) Name() string { return s.name }

// Start starts a stopped server again, on the same ports and store, and
// returns once it is healthy. A running server is left alone.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("nats-server %s did not restart: %v\n%s", s.name, err, s.logTail())
	}
}

func (s *Server) start() error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return nil
	}
	conf := filepath.Join(s.dir, "nats.conf")
	if err := os.WriteFile(conf, []byte(s.config), 0o600); err != nil {
		s.mu.Unlock()
		return err
	}
	log, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	cmd := exec.Command(s.bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		s.mu.Unlock()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return s.waitHealthy(done)
}

// waitHealthy polls /healthz until it answers 200: the one place with a
// fixed retry interval, waiting for a process to start listening.
func (s *Server) waitHealthy(done <-chan struct{}) error {
	hc := &http.Client{Timeout: time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", s.monitor)
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 0; attempt < 600 && time.Now().Before(deadline); attempt++ {
		if resp, err := hc.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-done:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return errors.New("exited before it was healthy")
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.Stop()
	return errors.New("not healthy after 30s")
}

// Stop kills the server (SIGKILL: as if its machine died) and waits for it
// to exit. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
