// Command correctness runs every candidate validator on tricky inputs and
// prints a Markdown table. Each (input, validator) pair runs in its own child
// process so that a fatal error (stack overflow, SIGSEGV in asm/native code)
// is recorded instead of killing the whole run.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	jsonbench "github.com/tbproxy/tbproxy/bench/jsonvalid"
)

type tcase struct {
	name string
	data []byte
}

func nest(open, close string, n int) string {
	return strings.Repeat(open, n) + strings.Repeat(close, n)
}

func cases() []tcase {
	oneMB := strings.Repeat("x", 1<<20)
	return []tcase{
		{"`{\"a\":1}`", []byte(`{"a":1}`)},
		{"`{\"a\":1} x` trailing garbage", []byte(`{"a":1} x`)},
		{"`{\"a\":1}{\"b\":2}` two values", []byte(`{"a":1}{"b":2}`)},
		{"`{\"a\":}`", []byte(`{"a":}`)},
		{"`{\"a\":\"\\x01\"}` raw control char", []byte("{\"a\":\"\x01\"}")},
		{"raw control char in key `{\"\\x01\":1}`", []byte("{\"\x01\":1}")},
		{"raw TAB in string `{\"a\":\"x\ty\"}`", []byte("{\"a\":\"x\ty\"}")},
		{"raw TAB before an escape `{\"a\":\"\t\\n\"}`", []byte("{\"a\":\"\t\\n\"}")},
		{"raw 0x01 before an escape `{\"a\":\"\x01\\u00e9\"}`", []byte("{\"a\":\"\x01\\u00e9\"}")},
		{"raw TAB in key before an escape `{\"\t\\n\":1}`", []byte("{\"\t\\n\":1}")},
		{"invalid UTF-8 in string `\\xff\\xfe`", []byte("{\"a\":\"\xff\xfe\"}")},
		{"truncated UTF-8 in string `\\xe6\\x9d`", []byte("{\"a\":\"\xe6\x9d\"}")},
		{"UTF-8-encoded surrogate `\\xed\\xa0\\x80`", []byte("{\"a\":\"\xed\xa0\x80\"}")},
		{"`{\"a\":1e999}`", []byte(`{"a":1e999}`)},
		{"`{\"a\":18446744073709551616}` (>uint64)", []byte(`{"a":18446744073709551616}`)},
		{"`{\"a\":01}`", []byte(`{"a":01}`)},
		{"`{\"a\":-}`", []byte(`{"a":-}`)},
		{"`{\"a\":1.}`", []byte(`{"a":1.}`)},
		{"`{\"a\":.5}`", []byte(`{"a":.5}`)},
		{"`{\"a\":+1}`", []byte(`{"a":+1}`)},
		{"`{\"a\":1e}`", []byte(`{"a":1e}`)},
		{"`{\"a\":NaN}`", []byte(`{"a":NaN}`)},
		{"`{\"a\":-0,\"b\":1E+2}` (valid)", []byte(`{"a":-0,"b":1E+2}`)},
		{"` {\"a\":1} ` surrounding spaces", []byte(` {"a":1} `)},
		{"`{\"a\":1}\\n` trailing newline", []byte("{\"a\":1}\n")},
		{"`\\t{ \"a\" :\\r\\n1 }` inner whitespace", []byte("\t{ \"a\" :\r\n1 }")},
		{"`\\f{\"a\":1}` form feed", []byte("\f{\"a\":1}")},
		{"`{\"a\":1}\\x00` trailing NUL", []byte("{\"a\":1}\x00")},
		{"raw NUL in string `{\"a\":\"x\x00y\"}`", []byte("{\"a\":\"x\x00y\"}")},
		{"raw NUL between tokens `{\"a\":\x001}`", []byte("{\"a\":\x001}")},
		{"UTF-8 BOM + `{\"a\":1}`", []byte("\xef\xbb\xbf{\"a\":1}")},
		{"`{\"a\":\"\\ud800\"}` lone surrogate", []byte(`{"a":"\ud800"}`)},
		{"`{\"a\":\"\\ud800\\u0041\"}` bad pair", []byte(`{"a":"\ud800\u0041"}`)},
		{"`{\"a\":\"\\u00zz\"}` bad hex", []byte(`{"a":"\u00zz"}`)},
		{"`{\"a\":\"\\q\"}` bad escape", []byte(`{"a":"\q"}`)},
		{"`{\"a\":\"\\u0000\\x7f\"}` (valid)", []byte("{\"a\":\"\\u0000\x7f\"}")},
		{"`{\"a\":1,\"a\":2}` duplicate key", []byte(`{"a":1,"a":2}`)},
		{"`{\"a\":tru}`", []byte(`{"a":tru}`)},
		{"`{\"a\":true` unterminated", []byte(`{"a":true`)},
		{"`{\"a\":\"x` unterminated string", []byte(`{"a":"x`)},
		{"10000 × `[` (unclosed)", []byte(strings.Repeat("[", 10000))},
		{"`[`×10000 `]`×10000 (depth 10000)", []byte(nest("[", "]", 10000))},
		{"`[`×10001 `]`×10001 (depth 10001)", []byte(nest("[", "]", 10001))},
		{"`{\"a\":` ×10000 … `}` (depth 10000)", []byte(strings.Repeat(`{"a":`, 10000) + "1" + strings.Repeat("}", 10000))},
		{"`[`×1000000 `]`×1000000", []byte(nest("[", "]", 1000000))},
		{"empty string", []byte{}},
		{"only spaces", []byte("   ")},
		{"`nul`", []byte(`nul`)},
		{"`{\"a\":1,}`", []byte(`{"a":1,}`)},
		{"`{'a':1}`", []byte(`{'a':1}`)},
		{"`[1,2]` (valid, not object)", []byte(`[1,2]`)},
		{"`\"str\"` (valid, not object)", []byte(`"str"`)},
		{"1 MB string value (valid)", []byte(`{"a":"` + oneMB + `"}`)},
		{"1 MB string + raw `\\x01` at end", []byte(`{"a":"` + oneMB + "\x01\"}")},
		{"1 MB string + `\\xff` at end", []byte(`{"a":"` + oneMB + "\xff\"}")},
		{"bench event small60", jsonbench.Event60()},
		{"bench event event240", jsonbench.Event240()},
		{"bench event large4k", jsonbench.Event4K()},
	}
}

func child(spec string) {
	parts := strings.Split(spec, ",")
	ci, _ := strconv.Atoi(parts[0])
	vi, _ := strconv.Atoi(parts[1])
	c := cases()[ci]
	v := jsonbench.Validators[vi]
	defer func() {
		if r := recover(); r != nil {
			s := strings.ReplaceAll(fmt.Sprint(r), "\n", " ")
			if len(s) > 80 {
				s = s[:80]
			}
			fmt.Printf("PANIC: %s\n", s)
		}
	}()
	in := bytes.Clone(c.data)
	ok := v.Fn(in)
	mod := ""
	if !bytes.Equal(in, c.data) {
		mod = " MODIFIED-INPUT"
	}
	fmt.Printf("%v%s\n", ok, mod)
}

func run(ci, vi int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("JSONBENCH_ONE=%d,%d", ci, vi))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := strings.TrimSpace(out.String())
	if ctx.Err() != nil {
		return "HANG"
	}
	if err != nil || res == "" {
		first := strings.SplitN(strings.TrimSpace(errb.String()), "\n", 2)[0]
		if len(first) > 70 {
			first = first[:70]
		}
		return fmt.Sprintf("CRASH(%v: %s)", err, first)
	}
	return res
}

// label makes control characters in a case name visible in Markdown.
func label(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func mark(s string) string {
	switch s {
	case "true":
		return "✓"
	case "false":
		return "✗"
	}
	return s
}

func main() {
	if spec := os.Getenv("JSONBENCH_ONE"); spec != "" {
		child(spec)
		return
	}
	vs := jsonbench.Validators
	cs := cases()
	fmt.Print("| input | stdlib |")
	for _, v := range vs[1:] {
		fmt.Printf(" %s |", v.Name)
	}
	fmt.Print("\n|---|---|")
	for range vs[1:] {
		fmt.Print("---|")
	}
	fmt.Println()
	diffs := map[string][]string{}
	for ci, c := range cs {
		ref := run(ci, 0)
		if want := fmt.Sprint(json.Valid(c.data)); ref != want {
			fmt.Fprintf(os.Stderr, "stdlib child mismatch on %s: %s vs %s\n", c.name, ref, want)
		}
		fmt.Printf("| %s | %s |", label(c.name), mark(ref))
		for vi := 1; vi < len(vs); vi++ {
			r := run(ci, vi)
			cell := mark(r)
			if r != ref {
				cell = "**" + cell + "** ≠"
				diffs[vs[vi].Name] = append(diffs[vs[vi].Name], label(c.name)+" → "+mark(r))
			}
			fmt.Printf(" %s |", cell)
		}
		fmt.Println()
	}
	fmt.Println()
	for _, v := range vs[1:] {
		fmt.Printf("- **%s** differs from encoding/json.Valid on %d input(s)", v.Name, len(diffs[v.Name]))
		if len(diffs[v.Name]) > 0 {
			fmt.Printf(": %s", strings.Join(diffs[v.Name], "; "))
		}
		fmt.Println()
	}
}
