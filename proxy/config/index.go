package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// keyIndex maps every key and table header written in a TOML document to its
// line, by indexed path ("pool[0].backend[1].weight"). BurntSushi/toml keeps
// one position per unindexed key, which cannot tell the second [[listener]]
// from the first, so the document is scanned once more here. The scanner
// relies on the document having parsed already: it skips values without
// checking them.
type keyIndex struct {
	src     string
	i, line int
	arrays  map[string]int      // indexed path of an array of tables -> elements so far
	lines   map[string]int      // indexed path -> line
	byPlain map[string][]string // unindexed path (toml.Key.String) -> indexed paths, in order
}

func indexKeys(src string) *keyIndex {
	x := &keyIndex{src: src, line: 1, arrays: map[string]int{},
		lines: map[string]int{}, byPlain: map[string][]string{}}
	var table string   // indexed path of the current [table]
	var plain []string // its unindexed key
	for x.skipBlank(); x.i < len(src); x.skipBlank() {
		switch line := x.line; {
		case x.at("\n"):
			x.i++
			x.line++
		case x.at("#"):
			x.skipComment()
		case x.at("[["):
			x.i += 2
			plain = x.readKey()
			x.i += 2
			table = x.resolve(plain[:len(plain)-1])
			table = keyPath(table, plain[len(plain)-1])
			x.arrays[table]++
			table = fmt.Sprintf("%s[%d]", table, x.arrays[table]-1)
			x.record(table, plain, line)
		case x.at("["):
			x.i++
			plain = x.readKey()
			x.i++
			table = x.resolve(plain)
			x.record(table, plain, line)
		default:
			x.keyValue(table, plain)
		}
	}
	return x
}

// keyValue reads "key = value" (or "key = value" inside an inline table).
func (x *keyIndex) keyValue(table string, plain []string) {
	line := x.line
	key := x.readKey()
	if len(key) == 0 { // cannot happen in a parsed document; make progress anyway
		x.i++
		return
	}
	path := table
	for _, k := range key[:len(key)-1] { // a.b = 1 also defines table a, on this line
		path = keyPath(path, k)
		if _, ok := x.lines[path]; !ok {
			x.lines[path] = line
		}
	}
	path, full := keyPath(path, key[len(key)-1]), append(slices.Clone(plain), key...)
	x.record(path, full, line)
	x.skipBlank()
	if x.at("=") {
		x.i++
	}
	x.skipBlank()
	x.skipValue(path, full)
}

// resolve turns a table header's key into an indexed path: a component
// naming an array of tables means its last element so far.
func (x *keyIndex) resolve(key []string) string {
	path := ""
	for _, k := range key {
		path = keyPath(path, k)
		if n := x.arrays[path]; n > 0 {
			path = fmt.Sprintf("%s[%d]", path, n-1)
		}
	}
	return path
}

func (x *keyIndex) record(path string, plain []string, line int) {
	if _, ok := x.lines[path]; !ok {
		x.lines[path] = line
	}
	p := toml.Key(plain).String()
	x.byPlain[p] = append(x.byPlain[p], path)
}

func (x *keyIndex) at(s string) bool { return strings.HasPrefix(x.src[x.i:], s) }

func (x *keyIndex) skipBlank() {
	for x.i < len(x.src) && strings.IndexByte(" \t\r", x.src[x.i]) >= 0 {
		x.i++
	}
}

// skipLayout skips blanks, newlines and comments (inside arrays and inline
// tables).
func (x *keyIndex) skipLayout() {
	for x.skipBlank(); x.i < len(x.src); x.skipBlank() {
		switch {
		case x.at("\n"):
			x.i++
			x.line++
		case x.at("#"):
			x.skipComment()
		default:
			return
		}
	}
}

func (x *keyIndex) skipComment() {
	for x.i < len(x.src) && x.src[x.i] != '\n' {
		x.i++
	}
}

// readKey reads a dotted key of bare and quoted parts.
func (x *keyIndex) readKey() []string {
	var key []string
	for {
		x.skipBlank()
		start := x.i
		switch {
		case x.at(`"`):
			x.skipString(`"`, true)
			part := x.src[start:x.i]
			if s, err := strconv.Unquote(part); err == nil {
				part = s
			} else {
				part = strings.Trim(part, `"`)
			}
			key = append(key, part)
		case x.at("'"):
			x.skipString("'", false)
			key = append(key, strings.Trim(x.src[start:x.i], "'"))
		default:
			for x.i < len(x.src) && isBareKeyChar(x.src[x.i]) {
				x.i++
			}
			if x.i == start {
				return key
			}
			key = append(key, x.src[start:x.i])
		}
		x.skipBlank()
		if !x.at(".") {
			return key
		}
		x.i++
	}
}

func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// skipValue skips one value, recording the keys of inline tables in it.
func (x *keyIndex) skipValue(path string, plain []string) {
	switch {
	case x.at(`"""`):
		x.skipString(`"""`, true)
	case x.at("'''"):
		x.skipString("'''", false)
	case x.at(`"`):
		x.skipString(`"`, true)
	case x.at("'"):
		x.skipString("'", false)
	case x.at("["):
		x.i++
		for n := 0; ; {
			x.skipLayout()
			switch {
			case x.i >= len(x.src):
				return
			case x.at("]"):
				x.i++
				return
			case x.at(","):
				x.i++
			default:
				x.skipValue(fmt.Sprintf("%s[%d]", path, n), plain)
				n++
			}
		}
	case x.at("{"):
		x.i++
		for {
			x.skipLayout()
			switch {
			case x.i >= len(x.src):
				return
			case x.at("}"):
				x.i++
				return
			case x.at(","):
				x.i++
			default:
				x.keyValue(path, plain)
			}
		}
	default: // number, boolean, date: up to the next delimiter
		for x.i < len(x.src) && strings.IndexByte(",]}#\n", x.src[x.i]) < 0 {
			x.i++
		}
	}
}

// skipString skips a string delimited by delim, counting the newlines of
// multi-line strings.
func (x *keyIndex) skipString(delim string, escapes bool) {
	x.i += len(delim)
	for x.i < len(x.src) {
		switch c := x.src[x.i]; {
		case escapes && c == '\\':
			if x.i+1 < len(x.src) && x.src[x.i+1] == '\n' {
				x.line++
			}
			x.i += 2
		case x.at(delim):
			x.i += len(delim)
			// """a"""" ends with a quote: the closing delimiter is the last three.
			for extra := 0; len(delim) == 3 && extra < 2 && x.at(delim[:1]); extra++ {
				x.i++
			}
			return
		default:
			if c == '\n' {
				x.line++
			}
			x.i++
		}
	}
}
