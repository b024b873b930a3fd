package blkdebug

import "github.com/blockd/blockd/pkg/block"

func init() {
	block.Register("blkdebug", block.KindFilter, open)
}
