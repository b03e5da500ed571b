package jsonbench

import (
	"encoding/json"
	"testing"
)

func TestInputsValid(t *testing.T) {
	for _, c := range BenchCases() {
		t.Logf("%s: %d bytes", c.Name, len(c.Data))
		if !json.Valid(c.Data) {
			t.Fatalf("%s not valid per encoding/json", c.Name)
		}
		for _, v := range Validators {
			if !v.Fn(c.Data) || !IsObject(v.Fn, c.Data) {
				t.Errorf("%s rejects %s", v.Name, c.Name)
			}
		}
	}
}

var sink bool

func BenchmarkValid(b *testing.B) {
	for _, c := range BenchCases() {
		for _, v := range Validators {
			b.Run("case="+c.Name+"/impl="+v.Name, func(b *testing.B) {
				data, fn := c.Data, v.Fn
				b.ReportAllocs()
				b.SetBytes(int64(len(data)))
				ok := true
				for b.Loop() {
					ok = fn(data) && ok
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
				if !ok {
					b.Fatalf("%s rejected valid input %s", v.Name, c.Name)
				}
				sink = ok
			})
		}
	}
}

// BenchmarkIsObject measures the full proxy predicate (leading '{' check +
// validator) for the stdlib and the fastest candidates.
func BenchmarkIsObject(b *testing.B) {
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
			ok := true
			for b.Loop() {
				ok = IsObject(fn, data) && ok
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			if !ok {
				b.Fatal("rejected")
			}
		})
	}
}
