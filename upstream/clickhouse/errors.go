package clickhouse

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tbproxy/tbproxy/upstream"
)

// exception is ClickHouse's answer to a failed query: the HTTP status, the
// exception code (0 if the answer carried none, e.g. from a proxy in front
// of the server), its name where the server says it, and the message.
type exception struct {
	status int
	code   int
	name   string
	text   string
	body   []byte
	header func(string) string // valid until the answer is released
}

// parseException reads an error answer. The code comes from the
// X-ClickHouse-Exception-Code header where the server sends it, else from
// the body, which reads
//
//	Code: 60, e.displayText() = DB::Exception: Table a.b doesn't exist., e.what() = DB::Exception   (18.x)
//	Code: 60. DB::Exception: Table a.b does not exist. (UNKNOWN_TABLE) (version 23.8.1.1)        (21.x and later)
func parseException(status int, header func(string) string, body []byte) exception {
	e := exception{status: status, body: body, header: header}
	s := strings.TrimSpace(string(body[:min(len(body), 4*upstream.MaxErrorText)]))
	if rest, ok := strings.CutPrefix(s, "Code: "); ok {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		e.code, _ = strconv.Atoi(rest[:i])
		// DB::Exception, DB::NetException, DB::ErrnoException, …
		if _, after, ok := strings.Cut(rest, "Exception: "); ok {
			s = after
		}
	}
	if v, err := strconv.Atoi(strings.TrimSpace(header("X-ClickHouse-Exception-Code"))); err == nil && v > 0 {
		e.code = v
	}
	s, _, _ = strings.Cut(s, ", e.what() = ")
	if i := strings.LastIndex(s, " (version "); i >= 0 && strings.HasSuffix(s, ")") {
		s = s[:i]
	}
	if i := strings.LastIndex(s, " ("); i >= 0 && strings.HasSuffix(s, ")") && isCodeName(s[i+2:len(s)-1]) {
		e.name, s = s[i+2:len(s)-1], s[:i]
	}
	if e.name == "" {
		e.name = codes[e.code].name
	}
	e.text = upstream.ErrorText(s)
	return e
}

// isCodeName reports whether s looks like an error code name, such as
// UNKNOWN_TABLE (and not a number, as in "Too many parts (300)").
func isCodeName(s string) bool {
	if s == "" || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for _, r := range s {
		if (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '_' {
			return false
		}
	}
	return true
}

// class is what a ClickHouse error code means for a batch.
type class int

const (
	classUnknown  class = iota // decided by the HTTP status
	classRetry                 // transient: retried with backoff
	classMissing               // table or database missing: permanent, 404
	classAuth                  // credentials or rights refused: permanent, 403
	classBadRows               // rows ClickHouse cannot parse: permanent, 400
	classBadQuery              // the insert itself is refused: permanent, 400
	classRedetect              // a setting we sent is unknown: detect again, retry
)

// code is what this package knows of one ClickHouse error code.
type code struct {
	// name names the code in messages when the server does not (18.x).
	// Codes without one are named in a comment only: a message about them
	// from 18.x says "code 8", as it always has.
	name  string
	class class
	// mayHaveWritten: the insert may have been written even though the
	// answer is an error (a timeout, a lost connection, a cancelled query),
	// so a retry that ClickHouse drops as a duplicate is not a skipped row.
	mayHaveWritten bool
}

// codes is every ClickHouse error code this package acts on
// (src/Common/ErrorCodes.cpp). A code not listed follows the HTTP status:
// 5xx is retried, a few times (unknownAttempts). 18.x answers 500 for most
// errors, parse errors included, hence the explicit classes.
var codes = map[int]code{
	// code: {name, class, mayHaveWritten}
	60: {"UNKNOWN_TABLE", classMissing, false},
	81: {"UNKNOWN_DATABASE", classMissing, false},

	164: {"READONLY", classAuth, false},
	192: {"UNKNOWN_USER", classAuth, false},
	193: {"WRONG_PASSWORD", classAuth, false},
	194: {"REQUIRED_PASSWORD", classAuth, false},
	195: {"IP_ADDRESS_NOT_ALLOWED", classAuth, false},
	291: {"DATABASE_ACCESS_DENIED", classAuth, false},
	497: {"ACCESS_DENIED", classAuth, false},
	516: {"AUTHENTICATION_FAILED", classAuth, false},

	6:   {"CANNOT_PARSE_TEXT", classBadRows, false},
	8:   {"", classBadRows, false}, // THERE_IS_NO_COLUMN
	16:  {"", classBadRows, false}, // NO_SUCH_COLUMN_IN_TABLE
	20:  {"", classBadRows, false}, // NUMBER_OF_COLUMNS_DOESNT_MATCH
	25:  {"", classBadRows, false}, // CANNOT_PARSE_ESCAPE_SEQUENCE
	26:  {"CANNOT_PARSE_QUOTED_STRING", classBadRows, false},
	27:  {"CANNOT_PARSE_INPUT_ASSERTION_FAILED", classBadRows, false},
	32:  {"", classBadRows, false}, // ATTEMPT_TO_READ_AFTER_EOF
	33:  {"", classBadRows, false}, // CANNOT_READ_ALL_DATA
	38:  {"CANNOT_PARSE_DATE", classBadRows, false},
	41:  {"CANNOT_PARSE_DATETIME", classBadRows, false},
	53:  {"TYPE_MISMATCH", classBadRows, false},
	69:  {"", classBadRows, false}, // ARGUMENT_OUT_OF_BOUND
	70:  {"", classBadRows, false}, // CANNOT_CONVERT_TYPE
	72:  {"CANNOT_PARSE_NUMBER", classBadRows, false},
	117: {"INCORRECT_DATA", classBadRows, false},
	130: {"CANNOT_READ_ARRAY_FROM_TEXT", classBadRows, false},
	190: {"SIZES_OF_ARRAYS_DOESNT_MATCH", classBadRows, false},
	376: {"CANNOT_PARSE_UUID", classBadRows, false},
	// 18.16 answers LOGICAL_ERROR for some ordinary bad values (a string
	// where an array or a number is expected); retrying cannot help.
	49:  {"LOGICAL_ERROR", classBadRows, false},
	128: {"", classBadRows, false}, // TOO_LARGE_ARRAY_SIZE
	131: {"", classBadRows, false}, // TOO_LARGE_STRING_SIZE
	321: {"", classBadRows, false}, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
	349: {"", classBadRows, false}, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
	354: {"", classBadRows, false}, // CANNOT_DECOMPRESS (ZLIB_INFLATE_FAILED)

	36: {"", classBadQuery, false}, // BAD_ARGUMENTS
	48: {"", classBadQuery, false}, // NOT_IMPLEMENTED: the table's engine takes no inserts
	62: {"", classBadQuery, false}, // SYNTAX_ERROR

	115: {"UNKNOWN_SETTING", classRedetect, false},

	159: {"TIMEOUT_EXCEEDED", classRetry, true},
	173: {"", classRetry, false}, // CANNOT_ALLOCATE_MEMORY
	201: {"", classRetry, false}, // QUOTA_EXPIRED
	202: {"", classRetry, false}, // TOO_MANY_SIMULTANEOUS_QUERIES
	203: {"", classRetry, false}, // NO_FREE_CONNECTION
	209: {"SOCKET_TIMEOUT", classRetry, true},
	210: {"", classRetry, true},  // NETWORK_ERROR
	216: {"", classRetry, false}, // QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING
	225: {"", classRetry, false}, // NO_ZOOKEEPER
	236: {"", classRetry, true},  // ABORTED
	241: {"MEMORY_LIMIT_EXCEEDED", classRetry, false},
	242: {"", classRetry, false}, // TABLE_IS_READ_ONLY: a replica lost ZooKeeper
	243: {"", classRetry, false}, // NOT_ENOUGH_SPACE
	252: {"TOO_MANY_PARTS", classRetry, false},
	285: {"", classRetry, false}, // TOO_FEW_LIVE_REPLICAS
	286: {"", classRetry, false}, // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
	319: {"UNKNOWN_STATUS_OF_INSERT", classRetry, true},
	394: {"", classRetry, true},  // QUERY_WAS_CANCELLED
	439: {"", classRetry, false}, // CANNOT_SCHEDULE_TASK
	999: {"", classRetry, false}, // KEEPER_EXCEPTION
}

// class says what e means for the batch.
func (e exception) class() class {
	if c, ok := codes[e.code]; ok {
		return c.class
	}
	switch {
	case strings.HasPrefix(e.name, "CANNOT_PARSE"):
		return classBadRows
	case e.code == 0 && (e.status == http.StatusUnauthorized || e.status == http.StatusForbidden):
		return classAuth
	}
	return classUnknown
}

// mayHaveWritten reports whether a retried failure could follow an insert
// ClickHouse did write: its answer was lost or its outcome is unknown. An
// answer with no code (from a proxy in front of ClickHouse) may have been
// written when it is a 5xx.
func (e exception) mayHaveWritten() bool {
	if e.code == 0 {
		return e.status >= 500
	}
	return codes[e.code].mayHaveWritten
}

// describe is "code 60 UNKNOWN_TABLE" or "code 60".
func (e exception) describe() string {
	if e.name != "" {
		return fmt.Sprintf("code %d %s", e.code, e.name)
	}
	return fmt.Sprintf("code %d", e.code)
}

// unknownAttempts bounds the attempts at a batch ClickHouse refuses with a
// code this package does not know and a 5xx: it may be transient, but if
// it is not (18.16 answers 500 for many refusals), the batch is dropped
// after these, not retried forever with its datasource stalled behind it.
const unknownAttempts = 5

// refusal turns a ClickHouse error answer into a *upstream.RetryableError
// or a *upstream.StatusError whose status a waiting client receives: 404
// for a missing table or database, 403 for refused credentials (as
// Tinybird answers a bad token), 400 for rows or an insert ClickHouse
// cannot accept, 422 for an insert a materialized view failed after the
// table was written. table is the quoted table being inserted into ("" for
// other queries).
//
// ClickHouse's error text can quote the rows ("before: …") and a batch
// mixes the rows of many clients, so a client is told the code and what it
// means; the text goes to Detail (logs and dead letters) only.
func (c *Client) refusal(e exception, table string, rows int) error {
	what := "query"
	if table != "" {
		what = fmt.Sprintf("insert %d rows into %s", rows, table)
	}
	refuse := func(status int, msg string) error {
		return &upstream.StatusError{Status: status, Message: msg, Detail: msg + ": " + e.text}
	}
	if e.code != 0 && bytes.Contains(e.body, []byte("while pushing to view")) {
		// The table was written first, then a materialized view failed: a
		// retry would write the rows again, and so would a replay.
		return refuse(http.StatusUnprocessableEntity, fmt.Sprintf(
			"ClickHouse wrote the rows into %s but a materialized view failed (%s); the table may hold them, so they are not retried", table, e.describe()))
	}
	switch e.class() {
	case classMissing:
		if e.code == 81 || table == "" {
			return refuse(http.StatusNotFound, fmt.Sprintf("ClickHouse database %s does not exist (%s)", quoteIdent(c.opts.Database), e.describe()))
		}
		return refuse(http.StatusNotFound, fmt.Sprintf("ClickHouse table %s does not exist (%s): create it, then replay the dead letters", table, e.describe()))
	case classAuth:
		return refuse(http.StatusForbidden, fmt.Sprintf(
			"ClickHouse refused user %q (%s); check the user in TINYBIRD_BASE_URL, CLICKHOUSE_PASSWORD and the user's grants",
			c.opts.User, e.describe()))
	case classBadRows:
		return refuse(http.StatusBadRequest, fmt.Sprintf("ClickHouse cannot parse the rows for %s (%s)", table, e.describe()))
	case classBadQuery:
		return refuse(http.StatusBadRequest, fmt.Sprintf("ClickHouse refused to %s (%s)", what, e.describe()))
	case classRedetect: // Send forgets the detected features
		return &upstream.RetryableError{Status: e.status, Err: fmt.Errorf(
			"ClickHouse refused a setting to %s (%s): %s; detecting the server's settings again", what, e.describe(), e.text)}
	case classRetry:
		return &upstream.RetryableError{Status: e.status, Err: fmt.Errorf("%s: ClickHouse answered %d (%s): %s", what, e.status, e.describe(), e.text),
			Public: fmt.Sprintf("ClickHouse answered %d (%s)", e.status, e.describe())}
	}
	if e.code == 0 {
		// Not ClickHouse speaking (a proxy in front of it): HTTP rules, with
		// the text as parsed above.
		return upstream.Classify(e.status, e.text, e.header, time.Now())
	}
	if e.status >= 500 || e.status == http.StatusTooManyRequests {
		return &upstream.RetryableError{Status: e.status, Err: fmt.Errorf("%s: ClickHouse answered %d (%s): %s", what, e.status, e.describe(), e.text),
			Public: fmt.Sprintf("ClickHouse answered %d (%s)", e.status, e.describe()), MaxAttempts: unknownAttempts}
	}
	return refuse(e.status, fmt.Sprintf("ClickHouse refused to %s (%s)", what, e.describe()))
}
