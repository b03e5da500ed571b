package main

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestHashToken(t *testing.T) {
	// printf %s secret | sha256sum
	const secretDigest = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\n"
	const refused = "tbproxy hash-token: not a token the proxy accepts: a token is 1 to 65536 bytes of printable ASCII without spaces\n"
	for _, tc := range []struct {
		name       string
		args       []string
		stdin      io.Reader
		wantStatus int
		wantOut    string
		wantErr    string
	}{
		{"argument", []string{"secret"}, strings.NewReader("ignored\n"), 0, secretDigest, ""},
		{"stdin line", nil, strings.NewReader("secret\n"), 0, secretDigest, ""},
		{"stdin CRLF, spaces and more lines", nil, strings.NewReader("  secret \r\nsecond line\n"), 0, secretDigest, ""},
		{"stdin without newline", nil, strings.NewReader("secret"), 0, secretDigest, ""},
		{"argument with newline", []string{"secret\n"}, nil, 0, secretDigest, ""},
		{"other token", []string{"example-web-token"}, nil, 0,
			"ae63ade65172d4e6a1edb97e8e646a050512638c452499e7211fa87ad0dd1e29\n", ""}, // printf %s example-web-token | sha256sum
		{"help", []string{"-h"}, nil, 0, hashTokenUsage + "\n", ""},
		{"empty stdin", nil, strings.NewReader(""), 2, "", "tbproxy hash-token: empty token\n" + hashTokenUsage + "\n"},
		{"empty first line", nil, strings.NewReader("\nsecret\n"), 2, "", "tbproxy hash-token: empty token\n" + hashTokenUsage + "\n"},
		{"blank stdin", nil, strings.NewReader(" \r\n"), 2, "", "tbproxy hash-token: empty token\n" + hashTokenUsage + "\n"},
		{"empty argument", []string{""}, nil, 2, "", "tbproxy hash-token: empty token\n" + hashTokenUsage + "\n"},
		{"two arguments", []string{"secret", "more"}, nil, 2, "", hashTokenUsage + "\n"},
		{"space inside", []string{"Bearer secret"}, nil, 2, "", refused},
		{"control byte", nil, strings.NewReader("sec\x00ret\n"), 2, "", refused},
		{"line too long", nil, strings.NewReader(strings.Repeat("x", 65539)), 2, "",
			"tbproxy hash-token: read standard input: the first line is longer than 65538 bytes\n"},
		{"longest token", nil, strings.NewReader(strings.Repeat("x", 65536) + "\r\n"), 0,
			"1f8745f0d2d1387ec1af2211a3cf417b2e9e885e853472649c1d979d0e9370e3\n", ""}, // head -c 65536 /dev/zero | tr "\0" x | sha256sum
		{"read error", nil, iotest.ErrReader(errors.New("boom")), 1, "", "tbproxy hash-token: read standard input: boom\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			status := hashToken(tc.args, tc.stdin, &stdout, &stderr)
			if status != tc.wantStatus || stdout.String() != tc.wantOut || stderr.String() != tc.wantErr {
				t.Errorf("hashToken: got status %d, stdout %q, stderr %q; want %d, %q, %q",
					status, stdout.String(), stderr.String(), tc.wantStatus, tc.wantOut, tc.wantErr)
			}
		})
	}
}
