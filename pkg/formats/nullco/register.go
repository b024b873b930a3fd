package nullco

import "github.com/blockd/blockd/pkg/block"

func init() {
	block.Register("null-co", block.KindProtocol, open)
	block.Register("null-aio", block.KindProtocol, open)
}
