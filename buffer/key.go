package buffer

// MaxDatasourceLen is the longest datasource name Tinybird accepts.
const MaxDatasourceLen = 255

// MaxTokenLen is the longest token any configuration accepts (the top of
// MAX_TOKEN_BYTES). What comes back from the spool or the queue is checked
// against it, not against this run's MAX_TOKEN_BYTES: a run with a lower
// setting must not drop what an earlier one acknowledged.
const MaxTokenLen = 64 << 10

// ValidDatasource reports whether name is a datasource name Tinybird
// accepts: 1 to 255 letters, digits and underscores, not starting with a
// digit. Every name that reaches a Key, from a client, the spool, the queue
// or a replayed file, is checked with it: a name becomes a URL parameter, a
// table and a file name.
func ValidDatasource[T ~string | ~[]byte](name T) bool {
	if len(name) == 0 || len(name) > MaxDatasourceLen || (name[0] >= '0' && name[0] <= '9') {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
			return false
		}
	}
	return true
}

// ValidToken reports whether t has the shape of a token the proxy accepts:
// 1 to max bytes of printable ASCII without spaces. Tokens travel into
// headers, the spool and the queue; no real token has other bytes.
func ValidToken[T ~string | ~[]byte](t T, max int) bool {
	if len(t) == 0 || len(t) > max {
		return false
	}
	for i := 0; i < len(t); i++ {
		if t[i] < 0x21 || t[i] > 0x7e {
			return false
		}
	}
	return true
}
