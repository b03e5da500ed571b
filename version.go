package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// buildVersion is what `go build` stamped into this binary. Built in a git
// checkout, it has the commit and whether the tree had uncommitted changes;
// built without VCS information (from a tarball, a build context without
// .git, or with -buildvcs=false) it has neither, and Module is "(devel)".
type buildVersion struct {
	// Module is the main module's version: since Go 1.24, a tag or a
	// pseudo-version derived from the commit ("+dirty" if modified);
	// "(devel)" without VCS information.
	Module string
	// Revision is the full commit hash (vcs.revision); "" if not stamped.
	Revision string
	// Modified reports uncommitted changes at build time (vcs.modified).
	Modified bool
	// Go is the toolchain that built the binary.
	Go string
}

// readBuildVersion reads this binary's build information.
func readBuildVersion() buildVersion {
	return buildVersionOf(debug.ReadBuildInfo())
}

// buildVersionOf extracts a buildVersion from what debug.ReadBuildInfo
// returned.
func buildVersionOf(bi *debug.BuildInfo, ok bool) buildVersion {
	v := buildVersion{Module: "(devel)", Go: runtime.Version()}
	if !ok || bi == nil {
		return v
	}
	if bi.Main.Version != "" {
		v.Module = bi.Main.Version
	}
	if bi.GoVersion != "" {
		v.Go = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// String is the one line `tbproxy version` prints:
// "tbproxy (devel) rev 1a2b3c4d5e6f (modified) go1.26.8", with the
// revision cut to 12 characters, or "rev unknown" if none was stamped.
func (v buildVersion) String() string {
	rev := v.Revision
	if rev == "" {
		rev = "unknown"
	} else if len(rev) > 12 {
		rev = rev[:12]
	}
	s := "tbproxy " + v.Module + " rev " + rev
	if v.Modified {
		s += " (modified)"
	}
	return s + " " + v.Go
}

// printVersion is the version subcommand: it prints this binary's
// version, commit and toolchain on one line.
func printVersion() int {
	fmt.Println(readBuildVersion())
	return 0
}
