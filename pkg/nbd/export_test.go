package nbd

// SplicedReplies is how many read replies went out through a pipe.
func SplicedReplies() int64 { return splicedReplies.Load() }
