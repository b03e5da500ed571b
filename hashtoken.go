package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/tbproxy/tbproxy/buffer"
	"github.com/tbproxy/tbproxy/clients"
)

// hashTokenUsage is the hash-token subcommand's usage line.
const hashTokenUsage = "usage: tbproxy hash-token [TOKEN]  (without TOKEN: the first line of standard input, which keeps the token out of shell history)"

// maxTokenLine is the longest first line of standard input hash-token
// reads: the longest token any configuration accepts, and "\r\n".
const maxTokenLine = buffer.MaxTokenLen + 2

// errTokenLineTooLong is readTokenLine's error for a first line over
// maxTokenLine.
var errTokenLineTooLong = fmt.Errorf("the first line is longer than %d bytes", maxTokenLine)

// hashToken prints the hex SHA-256 of a client's token: what its
// token_sha256 holds in CLIENTS_FILE. The token is args[0] or, without
// arguments, the first line of stdin; either way without surrounding white
// space (a line end, a CR). It returns the exit status: 0, 1 if stdin could
// not be read, 2 for a usage error or a token the proxy would refuse (empty,
// or not 1 to buffer.MaxTokenLen bytes of printable ASCII without spaces),
// whose digest could never match. No message repeats the token. Usage:
//
//	tbproxy hash-token [TOKEN]
//	read -rs TOKEN && printf '%s\n' "$TOKEN" | tbproxy hash-token
func hashToken(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var token []byte
	switch {
	case len(args) == 0:
		line, err := readTokenLine(stdin)
		if errors.Is(err, errTokenLineTooLong) {
			fmt.Fprintln(stderr, "tbproxy hash-token: read standard input:", err)
			return 2
		}
		if err != nil {
			fmt.Fprintln(stderr, "tbproxy hash-token: read standard input:", err)
			return 1
		}
		token = line
	case len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help"):
		fmt.Fprintln(stdout, hashTokenUsage)
		return 0
	case len(args) == 1:
		token = bytes.TrimSpace([]byte(args[0]))
	default:
		fmt.Fprintln(stderr, hashTokenUsage)
		return 2
	}
	switch {
	case len(token) == 0:
		fmt.Fprintln(stderr, "tbproxy hash-token: empty token")
		fmt.Fprintln(stderr, hashTokenUsage)
		return 2
	case !buffer.ValidToken(token, buffer.MaxTokenLen):
		fmt.Fprintf(stderr, "tbproxy hash-token: not a token the proxy accepts: a token is 1 to %d bytes of printable ASCII without spaces\n", buffer.MaxTokenLen)
		return 2
	}
	fmt.Fprintln(stdout, clients.HashToken(token))
	return 0
}

// readTokenLine returns the first line of r without surrounding white
// space. It stops at the first '\n', so a token typed at a terminal needs
// no end-of-file, and reads at most maxTokenLine+1 bytes.
func readTokenLine(r io.Reader) ([]byte, error) {
	line, err := bufio.NewReader(io.LimitReader(r, maxTokenLine+1)).ReadBytes('\n')
	if err != nil && err != io.EOF {
		return nil, err
	}
	if len(line) > maxTokenLine {
		return nil, errTokenLineTooLong
	}
	return bytes.TrimSpace(line), nil
}
