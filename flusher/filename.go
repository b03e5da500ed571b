package flusher

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/tbproxy/tbproxy/buffer"
)

// maxStem is the longest stem that leaves room for every suffix a
// datasource's files take (".errors.jsonl" is the longest) within the
// 255-byte file-name limit of Linux file systems.
const maxStem = 255 - len(".errors.jsonl")

// fileStem returns the name a datasource's files take in a directory, the
// file sink's or the dead letters': the datasource itself when it is a
// valid name of at most maxStem bytes; otherwise its first 200 letters,
// digits and underscores, "-", and 16 hex digits of the SHA-256 of the
// whole name. A datasource name never holds '-', so a shortened stem never
// names another datasource's file, and no byte of a name can leave the
// directory or make a file name the file system refuses.
func fileStem(ds string) string {
	if buffer.ValidDatasource(ds) && len(ds) <= maxStem {
		return ds
	}
	keep := make([]byte, 0, 200+1+16)
	for i := 0; i < len(ds) && len(keep) < 200; i++ {
		if c := ds[i]; c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') {
			keep = append(keep, c)
		}
	}
	sum := sha256.Sum256([]byte(ds))
	keep = append(keep, '-')
	return string(hex.AppendEncode(keep, sum[:8]))
}
