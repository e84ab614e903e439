//go:build !race

package realmail

const raceEnabled = false
