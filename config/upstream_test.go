package config

import "testing"

// TestUpstream: TINYBIRD_BASE_URL's form says which upstream is configured,
// and only that kind's fields are set.
func TestUpstream(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		environ map[string]string
		want    Upstream
	}{
		{"default: Tinybird, pass-through", map[string]string{},
			Upstream{Kind: UpstreamTinybird, BaseURL: "https://api.tinybird.co"}},
		{"Tinybird with a token", map[string]string{"TINYBIRD_BASE_URL": "https://api.us-east.tinybird.co/",
			"TINYBIRD_TOKEN": "p.up", "AUTHORIZATION_TOKEN": "c"},
			Upstream{Kind: UpstreamTinybird, BaseURL: "https://api.us-east.tinybird.co", Token: "p.up"}},
		{"file sink", map[string]string{"TINYBIRD_BASE_URL": "file://./events"},
			Upstream{Kind: UpstreamFile, Dir: "./events"}},
		{"ClickHouse", map[string]string{"TINYBIRD_BASE_URL": "clickhouse://writer:pw@db:9000/analytics", "AUTHORIZATION_TOKEN": "c"},
			Upstream{Kind: UpstreamClickHouse, ClickHouse: ClickHouse{Addr: "db:9000", User: "writer", Password: "pw", Database: "analytics"}}},
		{"ClickHouse over TLS", map[string]string{"TINYBIRD_BASE_URL": "clickhouses://db", "AUTHORIZATION_TOKEN": "c"},
			Upstream{Kind: UpstreamClickHouse, ClickHouse: ClickHouse{TLS: true, Addr: "db:8443", User: "default", Database: "default"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(tt.environ)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := c.Upstream(); got != tt.want {
				t.Errorf("got %+v; want %+v", got, tt.want)
			}
		})
	}
}
