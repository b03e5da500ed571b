package e2e

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/tbproxy/tbproxy/internal/fakebird"
)

// peakRSS returns the process's peak resident set (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := procStatusBytes(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// memoryAttackLimit is the peak RSS the default configuration must stay
// under during each attack (issue 12: "under ~512 MiB").
const memoryAttackLimit = 512 << 20

// TestE2EMemoryUnderAttack runs the two memory attacks of the front-door
// hardening issue against the binary with its default limits, each in a
// fresh process, and checks its peak RSS (VmHWM) stays under 512 MiB:
//   - zstd bombs: 100 clients in parallel, each posting 5 bodies of 1.3 KB
//     that declare a 32 MiB window and decode to 40 MiB of spaces;
//   - held wait=true requests: 200 clients in parallel, each posting a 22 KB
//     gzip body that decodes to 10 MiB of blank lines and one event, while
//     upstream takes longer than WAIT_TIMEOUT to answer.
//
// The figures in docs are what this test logs (go test -run
// TestE2EMemoryUnderAttack -v ./e2e). It skips under -race, which multiplies
// memory use.
func TestE2EMemoryUnderAttack(t *testing.T) {
	if raceBuilt() {
		t.Skip("the race detector multiplies memory use; .ci/run runs this test without -race")
	}
	bomb := func() []byte {
		var b bytes.Buffer
		w, err := zstd.NewWriter(&b, zstd.WithWindowSize(32<<20), zstd.WithEncoderLevel(zstd.SpeedBestCompression))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(bytes.Repeat([]byte(" "), 40<<20))
		w.Close()
		return b.Bytes()
	}()
	blank := func() []byte {
		var b bytes.Buffer
		w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		w.Write(bytes.Repeat([]byte(strings.Repeat(" ", 15)+"\n"), (10<<20)/16-1))
		w.Write([]byte(`{"a":1}` + "\n"))
		w.Close()
		return b.Bytes()
	}()
	for _, attack := range []struct {
		name     string
		clients  int
		requests int
		path     string
		encoding string
		body     []byte
	}{
		{"zstd bombs", 100, 5, "/v0/events?name=bomb", "zstd", bomb},
		{"held wait=true", 200, 1, "/v0/events?name=held&wait=true", "gzip", blank},
	} {
		t.Run(attack.name, func(t *testing.T) {
			fb := fakebird.NewTB(t, fakebird.Options{NoValidate: true})
			fb.SetFault(fakebird.Always(fakebird.Response{Status: 200, Delay: 30 * time.Second}))
			c := startProxy(t, map[string]string{"TINYBIRD_BASE_URL": fb.URL(), "TINYBIRD_TOKEN": upstreamToken,
				"AUTHORIZATION_TOKEN": clientToken, "WAIT_TIMEOUT": "5s", "SHUTDOWN_TIMEOUT": "1s"})
			before := peakRSS(t, c.cmd.Process.Pid)
			client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: attack.clients}}
			statuses := map[string]int{} // "status: start of the error"
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range attack.clients {
				wg.Go(func() {
					for range attack.requests {
						req, _ := http.NewRequest("POST", c.base+attack.path, bytes.NewReader(attack.body))
						req.Header.Set("Authorization", "Bearer "+clientToken)
						req.Header.Set("Content-Encoding", attack.encoding)
						res, err := client.Do(req)
						status := "no answer"
						if err == nil {
							b, _ := io.ReadAll(res.Body)
							res.Body.Close()
							status = strconv.Itoa(res.StatusCode)
							if msg := string(b); len(msg) > 30 {
								status += " " + msg[10:30]
							}
						}
						mu.Lock()
						statuses[status]++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			peak := peakRSS(t, c.cmd.Process.Pid)
			t.Logf("%s: %d requests of %d bytes, answers %v; peak RSS %.0f MiB (%.0f MiB before)",
				attack.name, attack.clients*attack.requests, len(attack.body), statuses, float64(peak)/(1<<20), float64(before)/(1<<20))
			if peak > memoryAttackLimit {
				t.Errorf("peak RSS %d MiB; want under %d MiB", peak>>20, memoryAttackLimit>>20)
			}
			if statuses["no answer"] > 0 {
				t.Errorf("%d requests got no answer", statuses["no answer"])
			}
		})
	}
}
