// Package filters registers every filter driver: importing it for its
// side effect makes throttle, copy-on-read, blkdebug, quorum and
// compress available to blockdev-add.
//
//	import _ "github.com/blockd/blockd/pkg/filters"
//
// Each driver lives in its own package (throttle, cor, blkdebug, quorum,
// compress) with a doc.go that describes what it does, its options and
// the permissions it takes; those packages also export what QMP commands
// need of them (throttle groups for object-add, qom-get and qom-set; the
// group of a throttle node, the bottom of a copy-on-read node for
// queries; blkdebug's Go injector for tests).
package filters

import (
	_ "github.com/blockd/blockd/pkg/filters/blkdebug"
	_ "github.com/blockd/blockd/pkg/filters/compress"
	_ "github.com/blockd/blockd/pkg/filters/cor"
	_ "github.com/blockd/blockd/pkg/filters/quorum"
	_ "github.com/blockd/blockd/pkg/filters/throttle"
)
