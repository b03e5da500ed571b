package clients

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	json "github.com/goccy/go-json"
	"github.com/tbproxy/tbproxy/buffer"
)

// MaxFileSize is the largest clients file Parse and Load accept, in bytes
// (1 MiB): room for MaxClients clients with short allow-lists.
const MaxFileSize = 1 << 20

// MaxClients is the most clients one file may name.
const MaxClients = 10_000

// maxNameLen is the longest client name: it becomes a metric label value
// and a log field.
const maxNameLen = 64

// maxReported is how many errors Parse lists before it only counts the rest:
// a file of 10,000 bad clients should not become a 10,000-line message.
const maxReported = 20

// maxQuoted is how many bytes of a bad value an error message repeats.
const maxQuoted = 80

// errTooLarge is Parse's and Load's error for a file over MaxFileSize.
var errTooLarge = fmt.Errorf("larger than 1 MiB (MaxFileSize, %d bytes)", MaxFileSize)

// fileJSON is the file's top-level object. Clients stays raw so that each
// client is decoded, and its errors reported, on its own.
type fileJSON struct {
	Clients json.RawMessage `json:"clients"` // nil: the key is missing
}

// fileFields are fileJSON's keys.
var fileFields = []string{"clients"}

// clientJSON is one client object as written. The limits stay raw, so that
// Parse can refuse fractions and exponents, which a decode into int64 would
// report only as a type error.
type clientJSON struct {
	Name            string          `json:"name"`
	TokenSHA256     string          `json:"token_sha256"`
	Datasources     []string        `json:"datasources"` // nil: omitted or null; empty: []
	EventsPerMinute json.RawMessage `json:"events_per_minute"`
	EventsPerDay    json.RawMessage `json:"events_per_day"`
}

// clientFields are clientJSON's keys.
var clientFields = []string{"name", "token_sha256", "datasources", "events_per_minute", "events_per_day"}

// emptyTokenDigest is the SHA-256 of the empty token, which no client may
// have: the proxy treats an empty token as none.
var emptyTokenDigest = sha256.Sum256(nil)

// Load reads and parses the clients file at path (see Parse). Every line of
// its error starts with "CLIENTS_FILE <path>: ". It does not keep the file
// open.
func Load(path string) (*Set, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("CLIENTS_FILE %s: %w", path, err)
	}
	s, err := Parse(data)
	if err != nil {
		return nil, prefixErrors("CLIENTS_FILE "+path+": ", err)
	}
	return s, nil
}

// readFile reads the file at path, refusing one over MaxFileSize without
// reading more than one byte past it. Its errors leave out the path, which
// Load adds.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, withoutPath(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, withoutPath(err)
	}
	if len(data) > MaxFileSize {
		return nil, errTooLarge
	}
	return data, nil
}

// withoutPath turns "open /etc/x.json: permission denied" into "open:
// permission denied", still wrapping the cause (errors.Is(err,
// fs.ErrNotExist) holds).
func withoutPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

// prefixErrors puts prefix before err, or before each of the errors that
// err joins, so that every line of the message carries it.
func prefixErrors(prefix string, err error) error {
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return fmt.Errorf("%s%w", prefix, err)
	}
	errs := joined.Unwrap()
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = fmt.Errorf("%s%w", prefix, e)
	}
	return errors.Join(out...)
}

// Parse builds a Set from the contents of a clients file, whose format the
// package documentation describes. It refuses the whole file if anything in
// it is wrong; the error then lists up to maxReported problems, one per
// line, each naming the client (its index and, when valid, its name) and
// the field. Parse does not retain data.
func Parse(data []byte) (*Set, error) {
	if len(data) > MaxFileSize {
		return nil, errTooLarge
	}
	list, err := decodeList(data)
	if err != nil {
		return nil, err
	}
	if len(list) > MaxClients {
		return nil, fmt.Errorf("clients: %d clients; at most %d (MaxClients) are allowed", len(list), MaxClients)
	}
	p := parser{names: make(map[string]int, len(list)), digests: make(map[[sha256.Size]byte]int, len(list))}
	s := &Set{clients: make([]*Client, 0, len(list)), byDigest: make(map[[sha256.Size]byte]*Client, len(list))}
	for i, raw := range list {
		if c := p.client(i, raw); c != nil {
			s.clients = append(s.clients, c)
			s.byDigest[c.digest] = c
		}
	}
	if err := p.result(); err != nil {
		return nil, err
	}
	return s, nil
}

// decodeList decodes the top-level object and returns its clients, each
// still raw.
func decodeList(data []byte) ([]json.RawMessage, error) {
	if len(trimSpace(data)) == 0 {
		return nil, errors.New(`empty file; want {"clients": [...]}`)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f fileJSON
	if err := dec.Decode(&f); err != nil {
		return nil, topLevelError(data, err)
	}
	if rest := trimSpace(data[dec.InputOffset():]); len(rest) > 0 {
		return nil, fmt.Errorf("%s: data after the top-level object", position(data, len(data)-len(rest)))
	}
	if err := checkKeys(data, fileFields); err != nil { // a second "clients" would replace the first
		return nil, err
	}
	if f.Clients == nil || string(f.Clients) == "null" {
		return nil, errors.New(`no "clients" list; write {"clients": []} for no named clients`)
	}
	var list []json.RawMessage
	if err := json.Unmarshal(f.Clients, &list); err != nil {
		return nil, fmt.Errorf("clients: must be a list of client objects, not %s", jsonKind(f.Clients))
	}
	return list, nil
}

// topLevelError explains why the top-level object did not decode.
func topLevelError(data []byte, err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Errorf("invalid JSON at %s: %s", position(data, int(syntax.Offset)-1), strings.TrimPrefix(syntax.Error(), "json: "))
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return errors.New("invalid JSON: the file ends inside the top-level object")
	case errors.As(err, &typ):
		return fmt.Errorf(`must be a JSON object {"clients": [...]}, not %s`, jsonKind(data))
	}
	if kerr := checkKeys(data, fileFields); kerr != nil {
		return kerr // an unknown field, named with what is allowed
	}
	return err
}

// parser validates clients one by one, remembering names and digests to
// refuse duplicates, and collects the errors.
type parser struct {
	names   map[string]int            // valid name → index of the first client with it
	digests map[[sha256.Size]byte]int // valid digest → index of the first client with it
	labels  []string                  // label of each client, by index, for duplicate errors
	errs    []error                   // the first maxReported errors
	n       int                       // how many errors in all
}

// addf records an error.
func (p *parser) addf(format string, args ...any) {
	p.n++
	if len(p.errs) < maxReported {
		p.errs = append(p.errs, fmt.Errorf(format, args...))
	}
}

// result returns the errors recorded, joined, or nil.
func (p *parser) result() error {
	if p.n > len(p.errs) {
		p.errs = append(p.errs, fmt.Errorf("and %d more errors", p.n-len(p.errs)))
	}
	return errors.Join(p.errs...)
}

// client validates the client at index i and returns it, or records its
// errors and returns nil.
func (p *parser) client(i int, raw json.RawMessage) *Client {
	label := "clients[" + strconv.Itoa(i) + "]"
	p.labels = append(p.labels, label)
	if kind := jsonKind(raw); kind != "object" {
		p.addf("%s: must be an object, not %s", label, kind)
		return nil
	}
	// Name the client in every message, if it has a valid name.
	var probe struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(raw, &probe) == nil && validName(probe.Name) {
		label += " (" + strconv.Quote(probe.Name) + ")"
		p.labels[i] = label
	}
	if err := checkKeys(raw, clientFields); err != nil {
		p.addf("%s: %v", label, err)
		return nil
	}
	var cj clientJSON
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields() // checkKeys found none; this keeps the struct and clientFields honest
	if err := dec.Decode(&cj); err != nil {
		p.addf("%s: %s", label, clientTypeError(err))
		return nil
	}

	before := p.n
	c := &Client{Name: cj.Name, Datasources: cj.Datasources}
	switch first, dup := p.names[cj.Name]; {
	case cj.Name == "":
		p.addf("%s: name: required", label)
	case !validName(cj.Name):
		p.addf("%s: name %s: must be 1 to %d characters of a-z, 0-9, '_', '.' and '-', starting with a letter or a digit",
			label, quote(cj.Name), maxNameLen)
	case dup:
		p.addf("%s: name: already used by clients[%d]", label, first)
	default:
		p.names[cj.Name] = i
	}
	// Never repeat the value: it may be a token pasted where its digest belongs.
	switch {
	case cj.TokenSHA256 == "":
		p.addf("%s: token_sha256: required: the SHA-256 of the client's token, in hex (tbproxy hash-token prints it)", label)
	case len(cj.TokenSHA256) != 2*sha256.Size || !decodeDigest(&c.digest, cj.TokenSHA256):
		p.addf("%s: token_sha256: must be exactly %d hex digits: the SHA-256 of the client's token (tbproxy hash-token prints it), never the token itself",
			label, 2*sha256.Size)
	case c.digest == emptyTokenDigest:
		p.addf("%s: token_sha256: is the SHA-256 of the empty token, which no client can send", label)
	default:
		if first, dup := p.digests[c.digest]; dup {
			p.addf("%s: token_sha256: same as %s; each client needs its own token", label, p.labels[first])
		} else {
			p.digests[c.digest] = i
		}
	}
	if cj.Datasources != nil && len(cj.Datasources) == 0 {
		p.addf(`%s: datasources: empty list; omit the field to allow any datasource, or list the allowed ones ("*" for all)`, label)
	}
	for j, pattern := range cj.Datasources {
		if !validPattern(pattern) {
			p.addf(`%s: datasources[%d] %s: must be a datasource name (letters, digits and '_', not starting with a digit, at most %d), `+
				`optionally followed by one '*', or "*" alone`, label, j, quote(pattern), buffer.MaxDatasourceLen)
		}
	}
	var err error
	if c.EventsPerMinute, err = parseLimit(cj.EventsPerMinute); err != nil {
		p.addf("%s: events_per_minute: %v", label, err)
	}
	if c.EventsPerDay, err = parseLimit(cj.EventsPerDay); err != nil {
		p.addf("%s: events_per_day: %v", label, err)
	}
	if p.n > before {
		return nil
	}
	c.compile()
	return c
}

// clientTypeError explains a client object that did not decode: a field of
// the wrong JSON type, such as "datasources": "x".
func clientTypeError(err error) string {
	var typ *json.UnmarshalTypeError
	if !errors.As(err, &typ) {
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	field, want := typ.Field, "a string"
	if field == "datasources" {
		want = "a list of strings"
	}
	if name, index, ok := strings.Cut(field, "."); ok { // "datasources.1"
		field = name + "[" + index + "]"
	}
	return fmt.Sprintf("%s: must be %s, not %s", field, want, typ.Value)
}

// checkKeys checks that the JSON object raw has only keys from fields,
// spelled exactly, each at most once. Decoding into a struct matches keys
// regardless of case and lets a repeated key replace the earlier value
// silently: a second "datasources" would widen the first.
func checkKeys(raw []byte, fields []string) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // '{': the caller decoded raw already
		return err
	}
	seen := make([]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		i := slices.Index(fields, key)
		switch {
		case i < 0:
			return unknownField(key, fields)
		case seen[i]:
			return fmt.Errorf("%s: appears more than once", key)
		}
		seen[i] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

// unknownField is checkKeys' error for key.
func unknownField(key string, fields []string) error {
	for _, f := range fields {
		if strings.EqualFold(key, f) {
			return fmt.Errorf("unknown field %s (field names are lower case: %q)", quote(key), f)
		}
	}
	known := make([]string, len(fields))
	for i, f := range fields {
		known[i] = strconv.Quote(f)
	}
	return fmt.Errorf("unknown field %s (the fields are %s)", quote(key), strings.Join(known, ", "))
}

// validName reports whether name is a valid client name: 1 to maxNameLen
// bytes of [a-z0-9_.-], starting with a letter or a digit. The proxy tells
// a named client's scope from a token digest's by the '~' a name cannot
// start with (proxy/clients.go).
func validName(name string) bool {
	if len(name) == 0 || len(name) > maxNameLen || !isLowerAlnum(name[0]) {
		return false
	}
	for i := 1; i < len(name); i++ {
		if c := name[i]; !isLowerAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func isLowerAlnum(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') }

// validPattern reports whether p is a valid allow-list pattern: "*", or a
// datasource name optionally followed by one '*'.
func validPattern(p string) bool {
	if p == "*" {
		return true
	}
	return buffer.ValidDatasource(strings.TrimSuffix(p, "*")) // ValidDatasource refuses any other '*'
}

// decodeDigest decodes the 64 hex digits s, in either case, into d, and
// reports whether they were valid.
func decodeDigest(d *[sha256.Size]byte, s string) bool {
	n, err := hex.Decode(d[:], []byte(s))
	return err == nil && n == sha256.Size
}

// parseLimit parses an events_per_minute or events_per_day value: a JSON
// integer without fraction or exponent, at least 0. Omitted or null is 0.
func parseLimit(raw json.RawMessage) (int64, error) {
	raw = trimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	if kind := jsonKind(raw); kind != "number" {
		return 0, fmt.Errorf("must be a whole number, not %s", kind)
	}
	s := string(raw)
	if strings.ContainsAny(s, ".eE") {
		return 0, fmt.Errorf("must be a whole number, written without a fraction or an exponent, got %s", clip(s))
	}
	n, err := strconv.ParseInt(s, 10, 64) // s is a JSON integer: the only error is its range
	switch {
	case err == nil && n >= 0: // "-0" too
		return n, nil
	case s[0] == '-':
		return 0, fmt.Errorf("must not be negative, got %s (0 or no field: no limit)", clip(s))
	}
	return 0, fmt.Errorf("must be at most %d, got %s", int64(math.MaxInt64), clip(s))
}

// jsonKind names the type of the JSON value raw holds, for error messages;
// raw must be valid JSON.
func jsonKind(raw []byte) string {
	raw = trimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "list"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// trimSpace removes JSON white space from both ends of b.
func trimSpace(b []byte) []byte { return bytes.Trim(b, " \t\r\n") }

// position returns "line L, column C" for the byte at offset off of data, both
// counted from 1, columns in bytes.
func position(data []byte, off int) string {
	off = min(max(off, 0), len(data))
	line := 1 + bytes.Count(data[:off], []byte{'\n'})
	col := off - bytes.LastIndexByte(data[:off], '\n')
	return fmt.Sprintf("line %d, column %d", line, col)
}

// quote returns s quoted, cut to maxQuoted bytes.
func quote(s string) string {
	if len(s) > maxQuoted {
		return strconv.Quote(s[:maxQuoted]) + "…"
	}
	return strconv.Quote(s)
}

// clip cuts s to maxQuoted bytes.
func clip(s string) string {
	if len(s) > maxQuoted {
		return s[:maxQuoted] + "…"
	}
	return s
}
