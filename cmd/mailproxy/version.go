package main

import (
	"runtime"
	"runtime/debug"
)

// versionLine is "mailproxy VERSION (git REVISION[, modified], TIME) GOVERSION":
// the -X main.version given at build time, else the module version from
// the build info ("(devel)" for a build from a work tree), and the VCS
// revision the go command stamped (go build -buildvcs, the default in a
// git checkout).
func versionLine() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		info = nil
	}
	return formatVersion(version, info)
}

func formatVersion(v string, info *debug.BuildInfo) string {
	if v == "" && info != nil {
		v = info.Main.Version
	}
	if v == "" {
		v = "(unknown)"
	}
	line := "mailproxy " + v
	if info != nil {
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
	return line + " " + runtime.Version()
}
