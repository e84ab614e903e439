package main

import (
	"bytes"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// TestHelp: help lists every command, and every flag each one parses.
func TestHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"help"}, &out, &errOut); code != 0 {
		t.Fatalf("help: %d %s", code, errOut.String())
	}
	for _, want := range []string{"run ", "check ", "ctl ", "demo ", "version ", "help ",
		"mailproxy run [-config FILE]", "mailproxy ctl [flags] COMMAND", "-token-file", "-timeout", "-admin", "-log-level", "-pop3"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"help", "ctl"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "reload ") || !strings.Contains(out.String(), "-token-file") {
		t.Errorf("help ctl: %d\n%s", code, out.String())
	}
	if code := run([]string{"help", "nope"}, &out, &errOut); code != 1 {
		t.Errorf("help of an unknown command exited %d", code)
	}
	errOut.Reset()
	if code := run([]string{"nope"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "check ") {
		t.Errorf("an unknown command: %d, stderr lacks the list:\n%s", code, errOut.String())
	}
}

func TestVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "mailproxy ") || !strings.Contains(out.String(), runtime.Version()) {
		t.Errorf("version: %d %q", code, out.String())
	}
	info := &debug.BuildInfo{Main: debug.Module{Path: "mailproxy", Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123abc"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	want := "mailproxy v1.2.3 (git 0123abc, modified, 2026-01-02T03:04:05Z) " + runtime.Version()
	if got := formatVersion("", info); got != want {
		t.Errorf("formatVersion = %q, want %q", got, want)
	}
	if got := formatVersion("v9", info); !strings.HasPrefix(got, "mailproxy v9 (git 0123abc") {
		t.Errorf("-X main.version is not shown first: %q", got)
	}
}
