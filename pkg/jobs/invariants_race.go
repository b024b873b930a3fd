//go:build race

package jobs

// invariants makes internal errors panic in race builds, which every test
// run uses (unit tests with -race, the iotests' blockd built with -race),
// so that a bug fails a test instead of being only logged (pebble's
// internal/invariants idea).
const invariants = true
