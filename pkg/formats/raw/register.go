package raw

import "github.com/blockd/blockd/pkg/block"

func init() {
	d := block.Register("raw", block.KindFormat, open)
	d.Probe = func(head []byte) int { return 1 } // anything is raw, as a last resort
}
