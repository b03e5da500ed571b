package config

// UpstreamKind names the kind of place the proxy delivers batches to.
type UpstreamKind int

const (
	// UpstreamTinybird is Tinybird's Events API, or anything that speaks
	// it, at an http:// or https:// TINYBIRD_BASE_URL.
	UpstreamTinybird UpstreamKind = iota
	// UpstreamClickHouse is a ClickHouse server at a clickhouse:// or
	// clickhouses:// TINYBIRD_BASE_URL.
	UpstreamClickHouse
	// UpstreamFile is the file sink: the directory a file:// TINYBIRD_BASE_URL
	// names.
	UpstreamFile
)

// Upstream is where the proxy delivers batches, and what delivering there
// needs. Only the fields of its Kind are set. It holds secrets (Token,
// ClickHouse.Password): never log it.
type Upstream struct {
	Kind UpstreamKind
	// BaseURL is Tinybird's API without a trailing slash, and Token is
	// TINYBIRD_TOKEN: empty in pass-through mode, where each client's own
	// token goes upstream.
	BaseURL, Token string
	// ClickHouse is the ClickHouse server and the user to write as.
	ClickHouse ClickHouse
	// Dir is the file sink's directory.
	Dir string
}

// Upstream returns where batches go, as TINYBIRD_BASE_URL says: a file://
// URL is the file sink, a clickhouse:// or clickhouses:// URL a ClickHouse
// server, any other Tinybird. It is the one answer to "which upstream":
// main, tbproxy replay and validation all ask it.
func (c Config) Upstream() Upstream {
	if dir, ok := c.FileSinkDir(); ok {
		return Upstream{Kind: UpstreamFile, Dir: dir}
	}
	if ch, ok := c.ClickHouse(); ok {
		return Upstream{Kind: UpstreamClickHouse, ClickHouse: ch}
	}
	return Upstream{Kind: UpstreamTinybird, BaseURL: c.TinybirdBaseURL, Token: c.TinybirdToken}
}
