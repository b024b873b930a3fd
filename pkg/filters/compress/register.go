package compress

import "github.com/blockd/blockd/pkg/block"

func init() {
	block.Register("compress", block.KindFilter, open)
}
