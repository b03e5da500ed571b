package clients

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// client returns a valid client object named name, with the digest of
// "token-"+name, plus the JSON fields in extra (",\"datasources\": [...]").
func client(name, extra string) string {
	return `{"name": "` + name + `", "token_sha256": "` + hexDigest("token-"+name) + `"` + extra + `}`
}

// The rules as error messages state them.
const (
	nameRule    = `must be 1 to 64 characters of a-z, 0-9, '_', '.' and '-', starting with a letter or a digit`
	digestRule  = `token_sha256: must be exactly 64 hex digits: the SHA-256 of the client's token (tbproxy hash-token prints it), never the token itself`
	patternRule = `must be a datasource name (letters, digits and '_', not starting with a digit, at most 255), optionally followed by one '*', or "*" alone`
	clientKeys  = `(the fields are "name", "token_sha256", "datasources", "events_per_minute", "events_per_day")`
)

// TestParseErrors checks that Parse refuses each kind of mistake with a
// message naming the client (index, and name when valid) and the field.
func TestParseErrors(t *testing.T) {
	long := strings.Repeat("a", 256)
	for _, tc := range []struct {
		name string
		data string
		want string // the whole message
	}{
		// The file as a whole.
		{"empty", ``, `empty file; want {"clients": [...]}`},
		{"white space", " \n\t ", `empty file; want {"clients": [...]}`},
		{"not an object", `[]`, `must be a JSON object {"clients": [...]}, not list`},
		{"no clients key", `{}`, `no "clients" list; write {"clients": []} for no named clients`},
		{"null clients", `{"clients": null}`, `no "clients" list; write {"clients": []} for no named clients`},
		{"clients not a list", `{"clients": {"name": "web"}}`, `clients: must be a list of client objects, not object`},
		{"unknown top-level field", `{"clients": [], "version": 1}`, `unknown field "version" (the fields are "clients")`},
		{"top-level key case", `{"Clients": []}`, `unknown field "Clients" (field names are lower case: "clients")`},
		{"clients twice", `{"clients": [], "clients": []}`, `clients: appears more than once`},
		{"trailing object", `{"clients": []} {}`, `line 1, column 17: data after the top-level object`},
		{"trailing text", "{\"clients\": []}\n\n  x", `line 3, column 3: data after the top-level object`},
		{"syntax error", `{"clients": [1,]}`, `invalid JSON at line 1, column 16: invalid character ']' looking for beginning of value`},
		{"syntax error on line 3", "{\"clients\": [\n  {\"name\": \"web\",}\n]}",
			`invalid JSON at line 2, column 18: invalid character '}' looking for beginning of object key string`},
		{"truncated", `{"clients": [`, `invalid JSON: the file ends inside the top-level object`},

		// One client's object.
		{"client not an object", clientsFile(client("a", ""), `"web"`), `clients[1]: must be an object, not string`},
		{"client null", clientsFile(`null`), `clients[0]: must be an object, not null`},
		{"unknown field", clientsFile(client("web", `, "datasource": ["a"]`)), `clients[0] ("web"): unknown field "datasource" ` + clientKeys},
		{"field name case", clientsFile(client("web", `, "Datasources": ["*"]`)),
			`clients[0] ("web"): unknown field "Datasources" (field names are lower case: "datasources")`},
		{"field twice", clientsFile(client("web", `, "datasources": ["a"], "datasources": ["*"]`)), `clients[0] ("web"): datasources: appears more than once`},

		// name
		{"name missing", clientsFile(`{"token_sha256": "` + hexDigest("x") + `"}`), `clients[0]: name: required`},
		{"name empty", clientsFile(client("", "")), `clients[0]: name: required`},
		{"name upper case", clientsFile(client("Web", "")), `clients[0]: name "Web": ` + nameRule},
		{"name starts with dash", clientsFile(client("-web", "")), `clients[0]: name "-web": ` + nameRule},
		{"name starts with dot", clientsFile(client(".web", "")), `clients[0]: name ".web": ` + nameRule},
		{"name starts with tilde", clientsFile(client("~web", "")), `clients[0]: name "~web": ` + nameRule},
		{"name with space", clientsFile(client("a b", "")), `clients[0]: name "a b": ` + nameRule},
		{"name with quote", clientsFile(client(`a'b`, "")), `clients[0]: name "a'b": ` + nameRule},
		{"name too long", clientsFile(client(strings.Repeat("n", 65), "")), `clients[0]: name "` + strings.Repeat("n", 65) + `": ` + nameRule},
		{"name very long", clientsFile(client(strings.Repeat("n", 500), "")), `clients[0]: name "` + strings.Repeat("n", 80) + `"…: ` + nameRule},
		// A value of exactly maxQuoted (80) bytes is repeated whole, with no "…".
		{"name of 80 bytes", clientsFile(client(strings.Repeat("n", 80), "")), `clients[0]: name "` + strings.Repeat("n", 80) + `": ` + nameRule},
		{"name not a string", clientsFile(`{"name": 5, "token_sha256": "` + hexDigest("x") + `"}`), `clients[0]: name: must be a string, not number`},
		{"name duplicate", clientsFile(client("web", ""), client("api", ""),
			`{"name": "web", "token_sha256": "`+hexDigest("other")+`"}`), `clients[2] ("web"): name: already used by clients[0]`},

		// token_sha256
		{"digest missing", clientsFile(`{"name": "web"}`), `clients[0] ("web"): token_sha256: required: the SHA-256 of the client's token, in hex (tbproxy hash-token prints it)`},
		{"digest empty", clientsFile(`{"name": "web", "token_sha256": ""}`), `clients[0] ("web"): token_sha256: required: the SHA-256 of the client's token, in hex (tbproxy hash-token prints it)`},
		{"digest too short", clientsFile(`{"name": "web", "token_sha256": "` + hexDigest("x")[:63] + `"}`), `clients[0] ("web"): ` + digestRule},
		{"digest too long", clientsFile(`{"name": "web", "token_sha256": "` + hexDigest("x") + `0"}`), `clients[0] ("web"): ` + digestRule},
		{"digest not hex", clientsFile(`{"name": "web", "token_sha256": "` + hexDigest("x")[:63] + `g"}`), `clients[0] ("web"): ` + digestRule},
		{"digest is a token", clientsFile(`{"name": "web", "token_sha256": "p.eyJ1IjogInNlY3JldCJ9.c2VjcmV0LXNpZ25hdHVyZQ"}`), `clients[0] ("web"): ` + digestRule},
		{"digest of empty token", clientsFile(`{"name": "web", "token_sha256": "` + hexDigest("") + `"}`),
			`clients[0] ("web"): token_sha256: is the SHA-256 of the empty token, which no client can send`},
		{"digest not a string", clientsFile(`{"name": "web", "token_sha256": true}`), `clients[0] ("web"): token_sha256: must be a string, not bool`},
		{"digest duplicate", clientsFile(client("web", ""), `{"name": "api", "token_sha256": "`+strings.ToUpper(hexDigest("token-web"))+`"}`),
			`clients[1] ("api"): token_sha256: same as clients[0] ("web"); each client needs its own token`},

		// datasources
		{"datasources empty", clientsFile(client("web", `, "datasources": []`)),
			`clients[0] ("web"): datasources: empty list; omit the field to allow any datasource, or list the allowed ones ("*" for all)`},
		{"datasources a string", clientsFile(client("web", `, "datasources": "page_views"`)), `clients[0] ("web"): datasources: must be a list of strings, not string`},
		{"datasource a number", clientsFile(client("web", `, "datasources": ["a", 3]`)), `clients[0] ("web"): datasources[1]: must be a string, not number`},
		{"datasource empty", clientsFile(client("web", `, "datasources": [""]`)), `clients[0] ("web"): datasources[0] "": ` + patternRule},
		{"star inside", clientsFile(client("web", `, "datasources": ["a*b"]`)), `clients[0] ("web"): datasources[0] "a*b": ` + patternRule},
		{"star first", clientsFile(client("web", `, "datasources": ["*a"]`)), `clients[0] ("web"): datasources[0] "*a": ` + patternRule},
		{"two stars", clientsFile(client("web", `, "datasources": ["**"]`)), `clients[0] ("web"): datasources[0] "**": ` + patternRule},
		{"two trailing stars", clientsFile(client("web", `, "datasources": ["a**"]`)), `clients[0] ("web"): datasources[0] "a**": ` + patternRule},
		{"starts with digit", clientsFile(client("web", `, "datasources": ["ok", "1abc"]`)), `clients[0] ("web"): datasources[1] "1abc": ` + patternRule},
		{"dash", clientsFile(client("web", `, "datasources": ["page-views"]`)), `clients[0] ("web"): datasources[0] "page-views": ` + patternRule},
		{"too long", clientsFile(client("web", `, "datasources": ["`+long+`"]`)), `clients[0] ("web"): datasources[0] "` + long[:80] + `"…: ` + patternRule},
		{"too long with star", clientsFile(client("web", `, "datasources": ["`+long+`*"]`)), `clients[0] ("web"): datasources[0] "` + long[:80] + `"…: ` + patternRule},

		// events_per_minute and events_per_day
		{"per minute negative", clientsFile(client("web", `, "events_per_minute": -1`)),
			`clients[0] ("web"): events_per_minute: must not be negative, got -1 (0 or no field: no limit)`},
		{"per day negative", clientsFile(client("web", `, "events_per_day": -50000`)),
			`clients[0] ("web"): events_per_day: must not be negative, got -50000 (0 or no field: no limit)`},
		{"per minute fraction", clientsFile(client("web", `, "events_per_minute": 1.5`)),
			`clients[0] ("web"): events_per_minute: must be a whole number, written without a fraction or an exponent, got 1.5`},
		{"per day exponent", clientsFile(client("web", `, "events_per_day": 5e7`)),
			`clients[0] ("web"): events_per_day: must be a whole number, written without a fraction or an exponent, got 5e7`},
		{"per day whole fraction", clientsFile(client("web", `, "events_per_day": 100.0`)),
			`clients[0] ("web"): events_per_day: must be a whole number, written without a fraction or an exponent, got 100.0`},
		{"per minute string", clientsFile(client("web", `, "events_per_minute": "100"`)), `clients[0] ("web"): events_per_minute: must be a whole number, not string`},
		{"per minute boolean", clientsFile(client("web", `, "events_per_minute": true`)), `clients[0] ("web"): events_per_minute: must be a whole number, not boolean`},
		{"per day overflow", clientsFile(client("web", `, "events_per_day": 9223372036854775808`)),
			`clients[0] ("web"): events_per_day: must be at most 9223372036854775807, got 9223372036854775808`},
		{"per day very negative", clientsFile(client("web", `, "events_per_day": -9223372036854775809`)),
			`clients[0] ("web"): events_per_day: must not be negative, got -9223372036854775809 (0 or no field: no limit)`},
		// A number of exactly maxQuoted (80) bytes is repeated whole; one
		// byte more is cut there and marked "…".
		{"per day negative, 80 bytes", clientsFile(client("web", `, "events_per_day": -1`+strings.Repeat("0", 78))),
			`clients[0] ("web"): events_per_day: must not be negative, got -1` + strings.Repeat("0", 78) + ` (0 or no field: no limit)`},
		{"per day negative, 81 bytes", clientsFile(client("web", `, "events_per_day": -1`+strings.Repeat("0", 79))),
			`clients[0] ("web"): events_per_day: must not be negative, got -1` + strings.Repeat("0", 78) + `… (0 or no field: no limit)`},

		// Several errors: every one is reported, valid clients are not.
		{"several in one client", clientsFile(client("ok", ""),
			`{"name": "Bad", "token_sha256": "x", "datasources": ["a b"], "events_per_minute": -2, "events_per_day": 0.5}`),
			`clients[1]: name "Bad": ` + nameRule + "\n" +
				`clients[1]: ` + digestRule + "\n" +
				`clients[1]: datasources[0] "a b": ` + patternRule + "\n" +
				`clients[1]: events_per_minute: must not be negative, got -2 (0 or no field: no limit)` + "\n" +
				`clients[1]: events_per_day: must be a whole number, written without a fraction or an exponent, got 0.5`},
		{"several clients", clientsFile(client("ok", ""), `{"name": "a"}`, `7`, client("ok", "")),
			`clients[1] ("a"): token_sha256: required: the SHA-256 of the client's token, in hex (tbproxy hash-token prints it)` + "\n" +
				`clients[2]: must be an object, not number` + "\n" +
				`clients[3] ("ok"): name: already used by clients[0]` + "\n" +
				`clients[3] ("ok"): token_sha256: same as clients[0] ("ok"); each client needs its own token`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse([]byte(tc.data))
			if err == nil {
				t.Fatalf("Parse succeeded with %d clients; want error %q", s.Len(), tc.want)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("Parse error:\ngot  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestParseNeverEchoesDigestField checks that no message repeats what was
// written in token_sha256, which may be a pasted token.
func TestParseNeverEchoesDigestField(t *testing.T) {
	const token = "p.eyJ1IjogInNlY3JldCJ9"
	for _, value := range []string{token, strings.Repeat("0", 63) + "~" + token} {
		_, err := Parse([]byte(clientsFile(`{"name": "web", "token_sha256": "` + value + `"}`)))
		if err == nil || strings.Contains(err.Error(), token) {
			t.Errorf("Parse error %v; want one without %q", err, token)
		}
	}
}

func TestParseManyErrorsAreCapped(t *testing.T) {
	var objects []string
	for i := range maxReported + 5 {
		objects = append(objects, fmt.Sprint(i))
	}
	_, err := Parse([]byte(clientsFile(objects...)))
	if err == nil {
		t.Fatal("Parse succeeded; want an error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxReported+1 {
		t.Fatalf("%d lines; want %d:\n%v", len(lines), maxReported+1, err)
	}
	if got, want := lines[maxReported-1], fmt.Sprintf("clients[%d]: must be an object, not number", maxReported-1); got != want {
		t.Errorf("last reported line: got %q; want %q", got, want)
	}
	if got, want := lines[maxReported], "and 5 more errors"; got != want {
		t.Errorf("last line: got %q; want %q", got, want)
	}
}

// manyClients returns a clients file with n short clients.
func manyClients(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"clients":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name":"c%d","token_sha256":"%s"}`, i, hexDigest(fmt.Sprint("t", i)))
	}
	b.WriteString("]}")
	return []byte(b.String())
}

func TestParseBounds(t *testing.T) {
	data := manyClients(MaxClients)
	if len(data) > MaxFileSize {
		t.Fatalf("test file of MaxClients clients is %d bytes, over MaxFileSize", len(data))
	}
	s, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse of %d clients: %v", MaxClients, err)
	}
	if s.Len() != MaxClients || s.Lookup([]byte("t9999")) != s.Clients()[9999] {
		t.Errorf("Parse of %d clients: Len = %d, or Lookup(t9999) is not clients[9999]", MaxClients, s.Len())
	}

	_, err = Parse(manyClients(MaxClients + 1))
	if want := "clients: 10001 clients; at most 10000 (MaxClients) are allowed"; err == nil || err.Error() != want {
		t.Errorf("Parse of %d clients: got %v; want %q", MaxClients+1, err, want)
	}

	big := []byte(`{"clients": []}` + strings.Repeat(" ", MaxFileSize-15+1))
	_, err = Parse(big)
	if want := "larger than 1 MiB (MaxFileSize, 1048576 bytes)"; err == nil || err.Error() != want {
		t.Errorf("Parse of %d bytes: got %v; want %q", len(big), err, want)
	}
	if _, err := Parse(big[:MaxFileSize]); err != nil {
		t.Errorf("Parse of exactly MaxFileSize bytes: %v", err)
	}
}

// writeFile writes data to a new file in a temporary directory and returns
// its path.
func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "clients.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoad(t *testing.T) {
	path := writeFile(t, []byte(clientsFile(client("web", `, "datasources": ["page_views"]`))))
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c := s.Lookup([]byte("token-web")); c == nil || c.Name != "web" {
		t.Errorf("Lookup(token-web) = %v; want client web", c)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.json")
	_, err := Load(missing)
	if want := "CLIENTS_FILE " + missing + ": open: no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("missing file: got %v; want %q", err, want)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: errors.Is(%v, fs.ErrNotExist) is false", err)
	}

	_, err = Load(dir)
	if want := "CLIENTS_FILE " + dir + ": read: is a directory"; err == nil || err.Error() != want {
		t.Errorf("directory: got %v; want %q", err, want)
	}

	// A file of exactly MaxFileSize bytes is read whole and accepted.
	exact := writeFile(t, []byte(`{"clients": []}`+strings.Repeat("\n", MaxFileSize-len(`{"clients": []}`))))
	if s, err := Load(exact); err != nil || s.Len() != 0 {
		t.Errorf("file of exactly MaxFileSize bytes: got %v, %v; want an empty set, no error", s, err)
	}

	big := writeFile(t, []byte(`{"clients": []}`+strings.Repeat("\n", MaxFileSize)))
	_, err = Load(big)
	if want := "CLIENTS_FILE " + big + ": larger than 1 MiB (MaxFileSize, 1048576 bytes)"; err == nil || err.Error() != want {
		t.Errorf("large file: got %v; want %q", err, want)
	}

	bad := writeFile(t, []byte(`{"clients": [`))
	_, err = Load(bad)
	if want := "CLIENTS_FILE " + bad + ": invalid JSON: the file ends inside the top-level object"; err == nil || err.Error() != want {
		t.Errorf("bad JSON: got %v; want %q", err, want)
	}

	// Every line of a many-error message names the file.
	several := writeFile(t, []byte(clientsFile(`{"name": "a"}`, `7`)))
	_, err = Load(several)
	want := "CLIENTS_FILE " + several + `: clients[0] ("a"): token_sha256: required: the SHA-256 of the client's token, in hex (tbproxy hash-token prints it)` + "\n" +
		"CLIENTS_FILE " + several + ": clients[1]: must be an object, not number"
	if err == nil || err.Error() != want {
		t.Errorf("several errors:\ngot  %v\nwant %s", err, want)
	}
}
