// Package jsonbench compares JSON validators for an NDJSON ingestion hot path.
package jsonbench

import (
	stdjson "encoding/json"

	"github.com/bytedance/sonic"
	jsonexp "github.com/go-json-experiment/json/jsontext"
	goccy "github.com/goccy/go-json"
	jsoniter "github.com/json-iterator/go"
	"github.com/minio/simdjson-go"
	segjson "github.com/segmentio/encoding/json"
	"github.com/tidwall/gjson"
	"github.com/valyala/fastjson"
)

// Validator is a candidate "is this byte slice one valid JSON value?" function.
// None of them modifies its input.
type Validator struct {
	Name string
	Fn   func([]byte) bool
}

var (
	jsontextCompatOpts = []jsonexp.Options{jsonexp.AllowDuplicateNames(true), jsonexp.AllowInvalidUTF8(true)}
	simdOpts           = []simdjson.ParserOption{simdjson.WithCopyStrings(false)}
	// simdPJ is reused between calls to avoid re-allocating the tape.
	// NOT safe for concurrent use; a real proxy would keep one per goroutine / sync.Pool.
	simdPJ *simdjson.ParsedJson
)

func simdValid(b []byte) bool {
	pj, err := simdjson.Parse(b, simdPJ, simdOpts...)
	if err != nil {
		return false
	}
	simdPJ = pj
	return true
}

// Validators is the list of candidates, stdlib first (it is the reference).
var Validators = []Validator{
	{"stdlib", stdjson.Valid},
	{"goccy", goccy.Valid},
	{"fastjson", func(b []byte) bool { return fastjson.ValidateBytes(b) == nil }},
	{"gjson", gjson.ValidBytes},
	{"sonic", sonic.Valid},
	{"segmentio", segjson.Valid},
	{"jsoniter", jsoniter.ConfigCompatibleWithStandardLibrary.Valid},
	{"jsontext", func(b []byte) bool { return jsonexp.Value(b).IsValid() }},
	{"jsontext-compat", func(b []byte) bool { return jsonexp.Value(b).IsValid(jsontextCompatOpts...) }},
	{"simdjson-go", simdValid},
}

// IsObject is the predicate the proxy needs: valid JSON text whose first
// non-whitespace byte is '{'. valid is one of the Validators' Fn.
func IsObject(valid func([]byte) bool, b []byte) bool {
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			continue
		case '{':
			return valid(b)
		default:
			return false
		}
	}
	return false
}
