package throttle

import "github.com/blockd/blockd/pkg/block"

func init() {
	block.Register("throttle", block.KindFilter, open)
}
