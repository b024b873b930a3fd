package qmp

// FormatJSON renders v the way QEMU writes JSON: members in the order of
// QEMU's dictionaries, ", " and ": " separators, one line. QEMU builds its
// json: pseudo-filenames with the same writer, so a daemon that reports
// such names uses this to print them as qsd does.
func FormatJSON(v any) (string, error) {
	x, err := marshalValue(v)
	if err != nil {
		return "", err
	}
	e := encoder{f: formatCompact}
	e.value(&x, 0)
	return string(e.buf), nil
}
