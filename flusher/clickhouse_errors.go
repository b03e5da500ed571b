package flusher

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// chError is ClickHouse's answer to a failed query: the HTTP status, the
// exception code (0 if the answer carried none, e.g. from a proxy in front
// of the server), its name where the server says it, and the message.
type chError struct {
	status int
	code   int
	name   string
	text   string
	body   []byte
	header func(string) string // valid until the answer is released
}

// parseCHError reads an error answer. The code comes from the
// X-ClickHouse-Exception-Code header where the server sends it, else from
// the body, which reads
//
//	Code: 60, e.displayText() = DB::Exception: Table a.b doesn't exist., e.what() = DB::Exception   (18.x)
//	Code: 60. DB::Exception: Table a.b does not exist. (UNKNOWN_TABLE) (version 23.8.1.1)        (21.x and later)
func parseCHError(status int, header func(string) string, body []byte) chError {
	e := chError{status: status, body: body, header: header}
	s := strings.TrimSpace(string(body[:min(len(body), 4*maxErrorText)]))
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
		e.name = chCodeNames[e.code]
	}
	e.text = strings.TrimSpace(s)
	if len(e.text) > maxErrorText {
		e.text = e.text[:maxErrorText] + "…"
	}
	if e.text == "" {
		e.text = "(empty body)"
	}
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

// chClass is what a ClickHouse error code means for a batch.
type chClass int

const (
	chUnknown  chClass = iota // decided by the HTTP status
	chRetry                   // transient: retried with backoff
	chMissing                 // table or database missing: permanent, 404
	chAuth                    // credentials or rights refused: permanent, 403
	chBadRows                 // rows ClickHouse cannot parse: permanent, 400
	chBadQuery                // the insert itself is refused: permanent, 400
	chRedetect                // a setting we sent is unknown: detect again, retry
)

// chCodes classifies ClickHouse's error codes (src/Common/ErrorCodes.cpp).
// Everything not listed follows the HTTP status: 5xx is retried. 18.x
// answers 500 for most errors, parse errors included, hence the explicit
// lists.
var chCodes = map[int]chClass{
	60: chMissing, // UNKNOWN_TABLE
	81: chMissing, // UNKNOWN_DATABASE

	164: chAuth, // READONLY
	192: chAuth, // UNKNOWN_USER
	193: chAuth, // WRONG_PASSWORD
	194: chAuth, // REQUIRED_PASSWORD
	195: chAuth, // IP_ADDRESS_NOT_ALLOWED
	291: chAuth, // DATABASE_ACCESS_DENIED
	497: chAuth, // ACCESS_DENIED
	516: chAuth, // AUTHENTICATION_FAILED

	6:   chBadRows, // CANNOT_PARSE_TEXT
	8:   chBadRows, // THERE_IS_NO_COLUMN
	16:  chBadRows, // NO_SUCH_COLUMN_IN_TABLE
	20:  chBadRows, // NUMBER_OF_COLUMNS_DOESNT_MATCH
	25:  chBadRows, // CANNOT_PARSE_ESCAPE_SEQUENCE
	26:  chBadRows, // CANNOT_PARSE_QUOTED_STRING
	27:  chBadRows, // CANNOT_PARSE_INPUT_ASSERTION_FAILED
	32:  chBadRows, // ATTEMPT_TO_READ_AFTER_EOF
	33:  chBadRows, // CANNOT_READ_ALL_DATA
	38:  chBadRows, // CANNOT_PARSE_DATE
	41:  chBadRows, // CANNOT_PARSE_DATETIME
	53:  chBadRows, // TYPE_MISMATCH
	69:  chBadRows, // ARGUMENT_OUT_OF_BOUND
	70:  chBadRows, // CANNOT_CONVERT_TYPE
	72:  chBadRows, // CANNOT_PARSE_NUMBER
	117: chBadRows, // INCORRECT_DATA
	130: chBadRows, // CANNOT_READ_ARRAY_FROM_TEXT
	190: chBadRows, // SIZES_OF_ARRAYS_DOESNT_MATCH
	376: chBadRows, // CANNOT_PARSE_UUID
	// 18.16 answers LOGICAL_ERROR for some ordinary bad values (a string
	// where an array or a number is expected); retrying cannot help.
	49:  chBadRows, // LOGICAL_ERROR
	128: chBadRows, // TOO_LARGE_ARRAY_SIZE
	131: chBadRows, // TOO_LARGE_STRING_SIZE
	321: chBadRows, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
	349: chBadRows, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
	354: chBadRows, // CANNOT_DECOMPRESS (ZLIB_INFLATE_FAILED)

	36: chBadQuery, // BAD_ARGUMENTS
	48: chBadQuery, // NOT_IMPLEMENTED: the table's engine takes no inserts
	62: chBadQuery, // SYNTAX_ERROR

	115: chRedetect, // UNKNOWN_SETTING

	159: chRetry, // TIMEOUT_EXCEEDED
	173: chRetry, // CANNOT_ALLOCATE_MEMORY
	201: chRetry, // QUOTA_EXPIRED
	202: chRetry, // TOO_MANY_SIMULTANEOUS_QUERIES
	203: chRetry, // NO_FREE_CONNECTION
	209: chRetry, // SOCKET_TIMEOUT
	210: chRetry, // NETWORK_ERROR
	216: chRetry, // QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING
	225: chRetry, // NO_ZOOKEEPER
	236: chRetry, // ABORTED
	241: chRetry, // MEMORY_LIMIT_EXCEEDED
	242: chRetry, // TABLE_IS_READ_ONLY: a replica lost ZooKeeper
	243: chRetry, // NOT_ENOUGH_SPACE
	252: chRetry, // TOO_MANY_PARTS
	285: chRetry, // TOO_FEW_LIVE_REPLICAS
	286: chRetry, // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
	319: chRetry, // UNKNOWN_STATUS_OF_INSERT
	394: chRetry, // QUERY_WAS_CANCELLED
	439: chRetry, // CANNOT_SCHEDULE_TASK
	999: chRetry, // KEEPER_EXCEPTION
}

// chCodeNames names the codes this file acts on, for messages from servers
// (18.x) that do not name them.
var chCodeNames = map[int]string{
	60: "UNKNOWN_TABLE", 81: "UNKNOWN_DATABASE", 115: "UNKNOWN_SETTING",
	164: "READONLY", 192: "UNKNOWN_USER", 193: "WRONG_PASSWORD", 194: "REQUIRED_PASSWORD",
	195: "IP_ADDRESS_NOT_ALLOWED", 291: "DATABASE_ACCESS_DENIED", 497: "ACCESS_DENIED", 516: "AUTHENTICATION_FAILED",
	6: "CANNOT_PARSE_TEXT", 26: "CANNOT_PARSE_QUOTED_STRING", 27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
	38: "CANNOT_PARSE_DATE", 41: "CANNOT_PARSE_DATETIME", 53: "TYPE_MISMATCH", 72: "CANNOT_PARSE_NUMBER",
	117: "INCORRECT_DATA", 130: "CANNOT_READ_ARRAY_FROM_TEXT", 190: "SIZES_OF_ARRAYS_DOESNT_MATCH",
	376: "CANNOT_PARSE_UUID", 49: "LOGICAL_ERROR", 159: "TIMEOUT_EXCEEDED", 209: "SOCKET_TIMEOUT", 241: "MEMORY_LIMIT_EXCEEDED",
	252: "TOO_MANY_PARTS", 319: "UNKNOWN_STATUS_OF_INSERT",
}

// class says what e means for the batch.
func (e chError) class() chClass {
	if cl, ok := chCodes[e.code]; ok {
		return cl
	}
	switch {
	case strings.HasPrefix(e.name, "CANNOT_PARSE"):
		return chBadRows
	case e.code == 0 && (e.status == http.StatusUnauthorized || e.status == http.StatusForbidden):
		return chAuth
	}
	return chUnknown
}

// mayHaveWritten reports whether a retried failure could follow an insert
// ClickHouse did write: its answer was lost or its outcome is unknown.
func (e chError) mayHaveWritten() bool {
	switch e.code {
	case 0, 159, 209, 210, 236, 319, 394:
		return e.status >= 500 || e.code != 0
	}
	return false
}

// describe is "code 60 UNKNOWN_TABLE" or "code 60".
func (e chError) describe() string {
	if e.name != "" {
		return fmt.Sprintf("code %d %s", e.code, e.name)
	}
	return fmt.Sprintf("code %d", e.code)
}

// chUnknownAttempts bounds the attempts at a batch ClickHouse refuses with
// a code this file does not know and a 5xx: it may be transient, but if it
// is not (18.16 answers 500 for many refusals), the batch is dropped after
// these, not retried forever with its datasource stalled behind it.
const chUnknownAttempts = 5

// refusal turns a ClickHouse error answer into a *RetryableError or a
// *StatusError whose status a waiting client receives: 404 for a missing
// table or database, 403 for refused credentials (as Tinybird answers a bad
// token), 400 for rows or an insert ClickHouse cannot accept, 422 for an
// insert a materialized view failed after the table was written. table is
// the quoted table being inserted into ("" for other queries).
//
// ClickHouse's error text can quote the rows ("before: …") and a batch
// mixes the rows of many clients, so a client is told the code and what it
// means; the text goes to Detail (logs and dead letters) only.
func (c *ClickHouse) refusal(e chError, table string, rows int) error {
	what := "query"
	if table != "" {
		what = fmt.Sprintf("insert %d rows into %s", rows, table)
	}
	refuse := func(status int, msg string) error {
		return &StatusError{Status: status, Message: msg, Detail: msg + ": " + e.text}
	}
	if e.code != 0 && bytes.Contains(e.body, []byte("while pushing to view")) {
		// The table was written first, then a materialized view failed: a
		// retry would write the rows again, and so would a replay.
		return refuse(http.StatusUnprocessableEntity, fmt.Sprintf(
			"ClickHouse wrote the rows into %s but a materialized view failed (%s); the table may hold them, so they are not retried", table, e.describe()))
	}
	switch e.class() {
	case chMissing:
		if e.code == 81 || table == "" {
			return refuse(http.StatusNotFound, fmt.Sprintf("ClickHouse database %s does not exist (%s)", quoteIdent(c.opts.Database), e.describe()))
		}
		return refuse(http.StatusNotFound, fmt.Sprintf("ClickHouse table %s does not exist (%s): create it, then replay the dead letters", table, e.describe()))
	case chAuth:
		return refuse(http.StatusForbidden, fmt.Sprintf(
			"ClickHouse refused user %q (%s); check the user in TINYBIRD_BASE_URL, CLICKHOUSE_PASSWORD and the user's grants",
			c.opts.User, e.describe()))
	case chBadRows:
		return refuse(http.StatusBadRequest, fmt.Sprintf("ClickHouse cannot parse the rows for %s (%s)", table, e.describe()))
	case chBadQuery:
		return refuse(http.StatusBadRequest, fmt.Sprintf("ClickHouse refused to %s (%s)", what, e.describe()))
	case chRedetect: // Send forgets the detected features
		return &RetryableError{Status: e.status, Err: fmt.Errorf(
			"ClickHouse refused a setting to %s (%s): %s; detecting the server's settings again", what, e.describe(), e.text)}
	case chRetry:
		return &RetryableError{Status: e.status, Err: fmt.Errorf("%s: ClickHouse answered %d (%s): %s", what, e.status, e.describe(), e.text),
			Public: fmt.Sprintf("ClickHouse answered %d (%s)", e.status, e.describe())}
	}
	if e.code == 0 {
		// Not ClickHouse speaking (a proxy in front of it): HTTP rules.
		return classify(e.status, e.body, e.header, time.Now())
	}
	if e.status >= 500 || e.status == http.StatusTooManyRequests {
		return &RetryableError{Status: e.status, Err: fmt.Errorf("%s: ClickHouse answered %d (%s): %s", what, e.status, e.describe(), e.text),
			Public: fmt.Sprintf("ClickHouse answered %d (%s)", e.status, e.describe()), MaxAttempts: chUnknownAttempts}
	}
	return refuse(e.status, fmt.Sprintf("ClickHouse refused to %s (%s)", what, e.describe()))
}
