package jsonbench

import (
	"strconv"
	"strings"
)

// Event240 is a realistic ~240 byte NDJSON line: nested object, array,
// big integer (> 2^53), floats, bools, null, UTF-8 text, emoji and \u escapes.
func Event240() []byte {
	return []byte(`{"ts":"2025-03-14T09:26:53Z","id":18446744073709551557,` +
		`"user":{"name":"Zoë","city":"Zürich","geo":[47.3769,-8.5417e0]},` +
		`"tags":["東京","ok","🚀"],"score":-12.5e-3,"active":true,"ref":null,` +
		`"msg":"caf\u00e9 \"q\" \ud83d\ude80\n","n":[0,1,2.5]}`)
}

// Event60 is a small ~60 byte event.
func Event60() []byte {
	return []byte(`{"id":9007199254740993,"ok":true,"v":-1.5,"t":"東京","n":null}`)
}

// Event4K is a ~4 KB event with long strings and deep nesting.
func Event4K() []byte {
	var sb strings.Builder
	long := "Lorem ipsum dolor sit amet, Zürich → 東京 🚀 caf\\u00e9 \\\"quoted\\\" \\\\ back\\/slash\\t tab; "
	sb.WriteString(`{"ts":"2025-03-14T09:26:53Z","id":18446744073709551557,"payload":`)
	const depth = 24
	for i := 0; i < depth; i++ {
		sb.WriteString(`{"level":`)
		sb.WriteString(strconv.Itoa(i))
		sb.WriteString(`,"f":`)
		sb.WriteString(strconv.FormatFloat(float64(i)*1.25e-7+0.5, 'g', -1, 64))
		sb.WriteString(`,"ok":`)
		sb.WriteString(strconv.FormatBool(i%2 == 0))
		sb.WriteString(`,"nil":null,"arr":[1,-2,3.5e10,"x",[true,false,null]],`)
		if i%6 == 0 {
			sb.WriteString(`"text":"`)
			sb.WriteString(long)
			sb.WriteString(long)
			sb.WriteString(`",`)
		}
		sb.WriteString(`"child":`)
	}
	sb.WriteString(`{"leaf":"`)
	sb.WriteString(long)
	sb.WriteString(`"}`)
	for i := 0; i < depth; i++ {
		sb.WriteString(`}`)
	}
	sb.WriteString(`,"end":[`)
	for i := 0; sb.Len() < 4050; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		sb.WriteString(strconv.Itoa(i * 7919))
	}
	sb.WriteString(`]}`)
	return []byte(sb.String())
}

// BenchCase is a named benchmark input.
type BenchCase struct {
	Name string
	Data []byte
}

// BenchCases returns the three benchmark inputs.
func BenchCases() []BenchCase {
	return []BenchCase{
		{"small60", Event60()},
		{"event240", Event240()},
		{"large4k", Event4K()},
	}
}
