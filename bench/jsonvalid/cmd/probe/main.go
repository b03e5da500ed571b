// Command probe double-checks a few surprising results in-process and measures
// peak RSS for pathological nesting (run one validator per process).
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/bytedance/sonic"
	jsonbench "github.com/tbproxy/tbproxy/bench/jsonvalid"
)

func main() {
	if len(os.Args) == 3 { // probe <validator-index> <depth>
		vi, _ := strconv.Atoi(os.Args[1])
		n, _ := strconv.Atoi(os.Args[2])
		in := []byte(strings.Repeat("[", n) + strings.Repeat("]", n))
		var before syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &before)
		ok := jsonbench.Validators[vi].Fn(in)
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("%-16s depth=%d ok=%v maxRSS=%dMB (before %dMB) StackSys=%dMB\n", jsonbench.Validators[vi].Name, n, ok, ru.Maxrss/1024, before.Maxrss/1024, ms.StackSys>>20)
		return
	}
	for _, s := range []string{`{"a":"\q"}`, `{"a":"\u00zz"}`, "{\"a\":\"\x01\"}", `{"a":"\n"}`} {
		fmt.Printf("sonic.Valid(%q)=%v ConfigStd=%v\n", s, sonic.Valid([]byte(s)), sonic.ConfigStd.Valid([]byte(s)))
	}
	for _, d := range []int{1024, 4095, 4096, 4097, 8192, 10000} {
		in := []byte(strings.Repeat("[", d) + strings.Repeat("]", d))
		fmt.Printf("sonic depth %d: %v\n", d, sonic.Valid(in))
	}
}
