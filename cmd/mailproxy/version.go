package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// versionLine is "mailproxy VERSION (REVISION[, modified] TIME) GOVERSION":
// the -X main.version given at build time, else the module version from
// the build info ("(devel)" for a build from a work tree), and the VCS
// revision the go command stamped.
func versionLine() string {
	v := version
	info, ok := debug.ReadBuildInfo()
	if v == "" && ok {
		v = info.Main.Version
	}
	if v == "" {
		v = "(unknown)"
	}
	line := "mailproxy " + v
	if ok {
		s := map[string]string{}
		for _, kv := range info.Settings {
			s[kv.Key] = kv.Value
		}
		if rev := s["vcs.revision"]; rev != "" {
			line += " (" + s["vcs"] + " " + rev
			if s["vcs.modified"] == "true" {
				line += ", modified"
			}
			if t := s["vcs.time"]; t != "" {
				line += ", " + t
			}
			line += ")"
		}
	}
	return fmt.Sprintf("%s %s", line, runtime.Version())
}
