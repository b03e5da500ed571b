//go:build !race

package clients

import "testing"

// TestAllocations guards the per-request calls: Lookup and Allows allocate
// nothing, found or not.
func TestAllocations(t *testing.T) {
	s := mustParse(t, clientsFile(
		client("web", `, "datasources": ["page_views", "audit_*"]`),
		client("any", ""),
	))
	web, anyDS := s.Lookup([]byte("token-web")), s.Lookup([]byte("token-any"))
	if web == nil || anyDS == nil {
		t.Fatal("Lookup(token-web) or Lookup(token-any) = nil")
	}
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"Lookup found", func() { s.Lookup([]byte("token-web")) }},
		{"Lookup not found", func() { s.Lookup([]byte("token-nobody")) }},
		{"Lookup empty", func() { s.Lookup(nil) }},
		{"Allows exact", func() { web.Allows([]byte("page_views")) }},
		{"Allows prefix", func() { web.Allows([]byte("audit_logins")) }},
		{"Allows refused", func() { web.Allows([]byte("api_requests")) }},
		{"Allows any", func() { anyDS.Allows([]byte("api_requests")) }},
	} {
		// The []byte conversions above are the caller's; the tokens and
		// names are short, so they stay on the stack.
		if n := testing.AllocsPerRun(100, tc.f); n != 0 {
			t.Errorf("%s: %v allocs per run; want 0", tc.name, n)
		}
	}
}
