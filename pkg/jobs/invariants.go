//go:build !race

package jobs

// invariants: see invariants_race.go. Release builds log internal errors
// and go on.
const invariants = false
