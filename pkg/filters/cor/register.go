package cor

import "github.com/blockd/blockd/pkg/block"

func init() {
	block.Register("copy-on-read", block.KindFilter, open)
}
