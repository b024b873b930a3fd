package file

import "github.com/blockd/blockd/pkg/block"

func init() {
	block.Register("file", block.KindProtocol, open)
	block.RegisterCreate("file", create)
}
