package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const statusToken = "s3cret-admin-token"

// cannedStatus is what a console answers, trimmed to what the table shows.
const cannedStatus = `{"time":"2025-01-02T03:04:05Z","uptime_seconds":61,
 "totals":{"accepted_per_second":12.5,"delivered_per_second":12,"accepted":1234567,"buffer_events":10,"buffer_max_events":100},
 "streams":[{"datasource":"page_views","token_id":"1a2b3c4d","held_events":10,"accepted":1234567,"last_status":200,"paused":true,"last_delivery":null,
   "samples":{"accepted":[1,2],"delivered":[1,2]}},
  {"datasource":"clicks","client":"web","accepted":7,"samples":{"accepted":[],"delivered":[]}},
  {"datasource":"clicks","client":"api-worker","accepted":8,"samples":{"accepted":[],"delivered":[]}}],
 "samples":{"interval_seconds":1,"accepted":[],"delivered":[],"buffer_fill":[]}}`

func TestStatusDefaultURL(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{nil, "http://127.0.0.1:8080"},
		{map[string]string{"PORT": "9000"}, "http://127.0.0.1:9000"},
		{map[string]string{"PORT": "9000", "ADMIN_ADDR": ":9100"}, "http://127.0.0.1:9100"},
		{map[string]string{"ADMIN_ADDR": "0.0.0.0:9100"}, "http://127.0.0.1:9100"},
		{map[string]string{"ADMIN_ADDR": "[::]:9100"}, "http://127.0.0.1:9100"},
		{map[string]string{"ADMIN_ADDR": "[::1]:9100"}, "http://[::1]:9100"},
		{map[string]string{"ADMIN_ADDR": "10.0.0.5:9100"}, "http://10.0.0.5:9100"},
	} {
		if got := defaultStatusURL(func(k string) string { return c.env[k] }); got != c.want {
			t.Errorf("%v: got %s, want %s", c.env, got, c.want)
		}
	}
	for base, want := range map[string]string{
		"127.0.0.1:9100":         "http://127.0.0.1:9100/-/api/streams",
		"https://proxy.example/": "https://proxy.example/-/api/streams",
		"http://h:1/prefix":      "http://h:1/prefix/-/api/streams",
	} {
		if u, err := statusEndpoint(base); err != nil || u.String() != want {
			t.Errorf("statusEndpoint(%q) = %v, %v; want %s", base, u, err, want)
		}
	}
	if _, err := statusEndpoint("ftp://h"); err == nil {
		t.Error("ftp:// accepted")
	}
}

// statusServer answers like the console: the canned status to the right
// bearer token, 401 otherwise; 404 anywhere else.
func statusServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path != "/-/api/streams":
			http.NotFound(w, r)
		case r.Header.Get("Authorization") != "Bearer "+statusToken:
			w.Header().Set("WWW-Authenticate", `Basic realm="tbproxy console"`)
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"this path needs ADMIN_TOKEN"}`))
		default:
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(cannedStatus))
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func runStatusWith(ctx context.Context, env map[string]string, args ...string) (code int, stdout, stderr string) {
	var out, errOut strings.Builder
	code = runStatus(ctx, args, func(k string) string { return env[k] }, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestStatusTable(t *testing.T) {
	srv := statusServer(t)
	code, out, errOut := runStatusWith(context.Background(), map[string]string{"ADMIN_TOKEN": statusToken}, "-url", srv.URL)
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"accepted 12.5/s", "page_views·1a2b3c4d", "1,234,567", "paused"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Two clients' streams of one datasource: two rows, by client name.
	api, web, pv := strings.Index(out, "\nclicks@api-worker "), strings.Index(out, "\nclicks@web "), strings.Index(out, "\npage_views·")
	if api < 0 || web < 0 || !(api < web && web < pv) {
		t.Errorf("want rows clicks@api-worker, clicks@web, then page_views, in order:\n%s", out)
	}
	if strings.Contains(out, clearScreen) {
		t.Error("one-shot output clears the screen")
	}
}

func TestStatusErrors(t *testing.T) {
	srv := statusServer(t)
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close() // nothing listens there any more
	for _, c := range []struct {
		name, url, token string
		want             []string
	}{
		{"no token", srv.URL, "", []string{"tbproxy status: 401 from " + srv.URL + "/-/api/streams: set ADMIN_TOKEN"}},
		{"wrong token", srv.URL, "wrong-token", []string{"401 from", "set ADMIN_TOKEN to the proxy's"}},
		{"console off", srv.URL + "/elsewhere", statusToken, []string{"404 from", "the console is off: set ADMIN_TOKEN on the proxy (and ADMIN_ADDR if it moved)"}},
		{"network", dead.URL, statusToken, []string{"tbproxy status:", dead.URL}},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errOut := runStatusWith(context.Background(), map[string]string{"ADMIN_TOKEN": c.token}, "-url", c.url)
			if code != 1 || out != "" {
				t.Errorf("exit %d, stdout %q; want 1 and nothing", code, out)
			}
			for _, want := range c.want {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr %q lacks %q", errOut, want)
				}
			}
			if c.token != "" && strings.Contains(errOut, c.token) {
				t.Errorf("stderr shows the token: %q", errOut)
			}
		})
	}
	if code, _, _ := runStatusWith(context.Background(), nil, "-interval", "0"); code != 2 {
		t.Errorf("-interval 0: exit %d, want 2", code)
	}
}

// -watch redraws until interrupted, then exits 0; a 401 ends it at once.
func TestStatusWatch(t *testing.T) {
	srv := statusServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuilder
	done := make(chan int)
	go func() {
		done <- runStatus(ctx, []string{"-url", srv.URL, "-watch", "-interval", "20ms"},
			func(k string) string { return map[string]string{"ADMIN_TOKEN": statusToken}[k] }, &out, &out)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), clearScreen) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel() // as SIGINT does through signal.NotifyContext
	if code := <-done; code != 0 {
		t.Errorf("interrupted -watch exited %d, want 0", code)
	}
	if n := strings.Count(out.String(), clearScreen); n < 3 || strings.Count(out.String(), "page_views·1a2b3c4d") < n {
		t.Errorf("%d frames, want ≥ 3 each with the table:\n%s", n, out.String())
	}

	code, _, errOut := runStatusWith(context.Background(), nil, "-url", srv.URL, "-watch")
	if code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("-watch without a token: exit %d, stderr %q", code, errOut)
	}
}

type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
