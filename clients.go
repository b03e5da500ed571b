package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tbproxy/tbproxy/clients"
	"github.com/tbproxy/tbproxy/config"
	"github.com/tbproxy/tbproxy/limits"
	"github.com/tbproxy/tbproxy/proxy"
)

// namedClients keeps CLIENTS_FILE in force: loaded at start, reloaded on
// SIGHUP and when the file changes. A file that fails validation is
// refused with a log line naming the problem, and the set in force stays.
type namedClients struct {
	path  string
	admin string // ADMIN_TOKEN: no client may hold the console's key
	log   *slog.Logger
	set   func(*clients.Set) // the server's SetClients

	mu   sync.Mutex // serializes reloads (SIGHUP and the watcher)
	last []byte     // the file's contents in force
}

// loadClients reads CLIENTS_FILE at start; nil, nil when it is unset. Its
// error names the file, the client and the field.
func loadClients(cfg config.Config, log *slog.Logger) (*namedClients, *clients.Set, error) {
	if cfg.ClientsFile == "" {
		return nil, nil, nil
	}
	data, set, err := readClients(cfg.ClientsFile, cfg.AdminToken)
	if err != nil {
		return nil, nil, err
	}
	log.Info("named clients loaded", "file", cfg.ClientsFile, "clients", set.Len())
	return &namedClients{path: cfg.ClientsFile, admin: cfg.AdminToken, log: log, last: data}, set, nil
}

func readClients(path, admin string) ([]byte, *clients.Set, error) {
	set, err := clients.Load(path)
	if err != nil {
		return nil, nil, err
	}
	if err := checkAdmin(set, path, admin); err != nil {
		return nil, nil, err
	}
	// Load read it too; reading again to remember what is in force costs a
	// small file once per change.
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return data, set, nil
}

// checkAdmin refuses a set in which a client's token is ADMIN_TOKEN: a
// client would hold the console's key (pause, flush).
func checkAdmin(set *clients.Set, path, admin string) error {
	if admin != "" {
		if c := set.Lookup([]byte(admin)); c != nil {
			return fmt.Errorf("CLIENTS_FILE %s: client %q: token_sha256 is the digest of ADMIN_TOKEN; clients must not hold the console's key", path, c.Name)
		}
	}
	return nil
}

// serveInto gives the server its clients and how to replace them.
func (n *namedClients) serveInto(srv *proxy.Server) {
	if n != nil {
		n.set = srv.SetClients
	}
}

// reload reads the file again and puts it in force if it is valid and
// changed; why says what asked (SIGHUP, a change of the file).
func (n *namedClients) reload(why string) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	data, err := os.ReadFile(n.path)
	if err == nil && bytes.Equal(data, n.last) {
		if why == "SIGHUP" {
			n.log.Info("named clients unchanged", "file", n.path)
		}
		return
	}
	var set *clients.Set
	if err == nil {
		set, err = clients.Parse(data)
	}
	if err == nil {
		err = checkAdmin(set, n.path, n.admin)
	}
	if err != nil {
		n.log.Error("named clients not reloaded: the clients in force stay", "file", n.path, "reason", why, "err", err)
		return
	}
	n.set(set)
	n.last = data
	n.log.Info("named clients reloaded", "file", n.path, "reason", why, "clients", set.Len())
}

// watch reloads the file when its contents change, checking every
// interval until ctx ends. A file being rewritten may be read half
// written: it fails validation, is refused, and the next check reads it
// whole.
func (n *namedClients) watch(ctx context.Context, interval time.Duration) {
	if n == nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var seen os.FileInfo
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(n.path)
		if err != nil {
			continue // reload would refuse it; SIGHUP says so
		}
		if seen != nil && fi.ModTime().Equal(seen.ModTime()) && fi.Size() == seen.Size() {
			continue
		}
		seen = fi
		n.reload("file changed")
	}
}

// newLimiter returns the limiter for named clients' and pass-through
// tokens' limits, with its table's metrics on reg, or nil when no limit
// can apply.
func newLimiter(cfg config.Config, reg prometheus.Registerer) *limits.Limiter {
	if cfg.ClientsFile == "" && cfg.RateLimitEventsPerMinute == 0 && cfg.RateLimitEventsPerDay == 0 {
		return nil
	}
	l := limits.New(limits.Options{MaxKeys: cfg.RateLimitMaxKeys})
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tbproxy_rate_limit_keys",
			Help: "Clients and tokens whose event counts the rate limiter keeps, against RATE_LIMIT_MAX_KEYS.",
		}, func() float64 { return float64(l.Stats().Keys) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tbproxy_rate_limit_evicted_total",
			Help: "Idle clients and tokens the rate limiter forgot to make room for new ones.",
		}, func() float64 { return float64(l.Stats().Evicted) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tbproxy_rate_limit_report_skipped_total",
			Help: "Clients or tokens in other replicas' counts left out because the table was full (RATE_LIMIT_MAX_KEYS): under-counted here until their windows end.",
		}, func() float64 { return float64(l.Stats().MergeSkipped) }),
	)
	return l
}

// limitShare is how often a replica tells the others what its clients
// sent: the tolerance of a limit shared by replicas is about what each
// other replica admits in this long (README, Named clients).
const limitShare = 50 * time.Millisecond

// broadcaster is the queue's connection as limit sharing uses it.
type broadcaster interface {
	Broadcast(topic string, data []byte) error
	Listen(topic string, f func(data []byte)) error
}

// shareLimits makes l one limit across the replicas that share b: each
// publishes what it admitted every limitShare and adds what the others
// admitted. It returns when ctx ends; a malformed report is logged (at most
// once a minute) and ignored.
func shareLimits(ctx context.Context, l *limits.Limiter, b broadcaster, log *slog.Logger) error {
	var id [8]byte
	_, _ = rand.Read(id[:])
	self := hex.EncodeToString(id[:])
	var lastWarn time.Time
	var warnMu sync.Mutex
	err := b.Listen("limits", func(data []byte) {
		if err := l.Merge(data, self); err != nil {
			warnMu.Lock()
			defer warnMu.Unlock()
			if time.Since(lastWarn) > time.Minute {
				lastWarn = time.Now()
				log.Warn("malformed rate limit report ignored", "err", err)
			}
		}
	})
	if err != nil {
		return err
	}
	go func() {
		t := time.NewTicker(limitShare)
		defer t.Stop()
		var buf []byte
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			buf = l.AppendReport(buf[:0], self)
			if len(buf) > 0 {
				_ = b.Broadcast("limits", buf) // lost: the others under-count one interval
			}
		}
	}()
	return nil
}
