package jsonbench

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
)

// mutate applies 1-3 random byte-level edits biased towards JSON-significant bytes.
func mutate(r *rand.Rand, src []byte) []byte {
	alphabet := []byte("{}[]:,\"\\/ \t\n\r\x00\x01\x1f\x7f\xc3\xa9\xe6\x9d\xb1\xf0\x9f\xed\xa0\xff0123456789eE+-.utrfalsn")
	b := append([]byte(nil), src...)
	for n := 1 + r.IntN(3); n > 0; n-- {
		if len(b) == 0 {
			b = append(b, alphabet[r.IntN(len(alphabet))])
			continue
		}
		i := r.IntN(len(b))
		switch r.IntN(5) {
		case 0: // replace
			b[i] = alphabet[r.IntN(len(alphabet))]
		case 1: // insert
			b = append(b[:i], append([]byte{alphabet[r.IntN(len(alphabet))]}, b[i:]...)...)
		case 2: // delete
			b = append(b[:i], b[i+1:]...)
		case 3: // truncate
			b = b[:i]
		case 4: // duplicate a chunk
			j := i + r.IntN(len(b)-i+1)
			b = append(b[:j], append(append([]byte(nil), b[i:j]...), b[j:]...)...)
		}
	}
	return b
}

// mustAgree names the validators that must agree with encoding/json.Valid on
// every input: goccy is the one the proxy uses (proxy/ndjson.go). The others
// are candidates measured in docs/performance.md; their disagreements are logged.
var mustAgree = map[string]bool{"goccy": true}

// TestDifferential compares every candidate with encoding/json.Valid on
// randomly mutated copies of the benchmark events (N via DIFF_N, default
// 200000), and fails if a validator in mustAgree disagrees once.
func TestDifferential(t *testing.T) {
	n := 200000
	if s := os.Getenv("DIFF_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	r := rand.New(rand.NewPCG(1, 2))
	seeds := [][]byte{Event60(), Event240(), Event4K(), []byte(`{"a":"\ud83d\ude80","b":[1e5,-0.0,null]}`)}
	diffs := make([]int, len(Validators))
	examples := make([][]byte, len(Validators))
	validCount := 0
	for k := 0; k < n; k++ {
		in := mutate(r, seeds[k%len(seeds)])
		want := json.Valid(in)
		if want {
			validCount++
		}
		for i, v := range Validators[1:] {
			if v.Fn(in) != want {
				diffs[i+1]++
				if examples[i+1] == nil || len(in) < len(examples[i+1]) {
					examples[i+1] = in
				}
			}
		}
	}
	t.Logf("%d mutated inputs, %d valid per encoding/json", n, validCount)
	found := 0
	for _, v := range Validators {
		if mustAgree[v.Name] {
			found++
		}
	}
	if found != len(mustAgree) {
		t.Fatalf("the validators %v are not all among the candidates", mustAgree)
	}
	for i, v := range Validators[1:] {
		if ex := examples[i+1]; ex != nil {
			if len(ex) > 120 {
				ex = ex[:120]
			}
			t.Logf("%-16s disagreements: %6d  shortest example: %q", v.Name, diffs[i+1], ex)
			if mustAgree[v.Name] {
				t.Errorf("%s, which the proxy uses, disagrees with encoding/json %d times, e.g. on %q", v.Name, diffs[i+1], ex)
			}
		} else {
			t.Logf("%-16s disagreements: %6d", v.Name, diffs[i+1])
		}
	}
}

// FuzzGoccyVsStdlib: go test -run '^$' -fuzz FuzzGoccyVsStdlib -fuzztime 60s
func FuzzGoccyVsStdlib(f *testing.F) {
	for _, c := range BenchCases() {
		f.Add(c.Data)
	}
	f.Add([]byte(`{"a":"\ud800"}`))
	f.Add([]byte("{\"a\":\"\xff\"}"))
	var goccyFn func([]byte) bool
	for _, v := range Validators {
		if v.Name == "goccy" {
			goccyFn = v.Fn
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := goccyFn(b), json.Valid(b); got != want {
			t.Fatalf("goccy=%v stdlib=%v for %q", got, want, b)
		}
	})
}

func BenchmarkValidParallel(b *testing.B) {
	want := map[string]bool{"stdlib": true, "goccy": true, "fastjson": true, "gjson": true, "sonic": true}
	data := Event240()
	for _, v := range Validators {
		if !want[v.Name] {
			continue
		}
		b.Run("case=event240/impl="+v.Name, func(b *testing.B) {
			fn := v.Fn
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if !fn(data) {
						panic("rejected")
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
