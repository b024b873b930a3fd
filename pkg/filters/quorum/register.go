package quorum

import "github.com/blockd/blockd/pkg/block"

func init() {
	// Not a filter: quorum has several children holding data, none of
	// which it presents 1:1 (QEMU gives them the data role too).
	block.Register("quorum", block.KindFormat, open)
}
