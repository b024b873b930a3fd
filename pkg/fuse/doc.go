// Package fuse is the FUSE export: it serves one block node as a single
// regular file mounted over an existing regular file (the mountpoint), the
// way qemu-storage-daemon 7.2's "fuse" export type does. It knows the
// block layer only through the Backend interface (the node seen through
// the export's root) and block's errno classification; the QMP side lives
// in pkg/blockdev.
//
// # What the file does
//
//   - getattr: size is the node's length, mode S_IFREG|0400 (|0200 when
//     writable) until a client changes it, owner the daemon's uid and gid,
//     st_blocks the node's allocated size in 512-byte units (its length
//     when that is unknown), st_blksize the node's request alignment, all
//     times "now", inode 1, one link.
//   - read: clipped at the end of the node (a short read at EOF).
//   - write: EACCES unless writable. Past the end, a growable export first
//     grows the node; otherwise the write is clipped (a write that starts at
//     or after the end writes nothing, which the kernel reports as EIO).
//   - setattr: size and mode, plus uid and gid when mounted with
//     allow_other; anything else (times) is ENOTSUP. A mode that gives
//     group or others access without allow_other is EPERM, write bits on a
//     read-only export EROFS, a size change on a read-only export EACCES.
//   - fallocate: EACCES unless writable. Mode 0 only at or past the end
//     (it grows the node; inside it is EOPNOTSUPP); punch-hole (with
//     keep-size) is a discard, so the range reads back as zeroes only where
//     the node really drops data (qsd 7.2 does the same); zero-range
//     writes zeroes, growing the node first unless keep-size; anything
//     else EOPNOTSUPP. A range past the end is EIO.
//   - fsync and flush (every close) flush the node; lseek answers
//     SEEK_DATA and SEEK_HOLE from the node's block status.
//
// # Mounting and unmounting
//
// The export opens /dev/fuse and mounts it itself (that needs
// CAP_SYS_ADMIN; blockd does not fall back to a fusermount helper) with
// qsd's options, default_permissions and, for allow-other on (or auto,
// where it works), allow_other. go-fuse then serves the connection with
// requests handled concurrently. Close unmounts with MNT_FORCE|MNT_DETACH:
// the kernel aborts the connection, so a process that still has the file
// open gets ENOTCONN (as after qsd's unmount), and the mount disappears
// even while such files are open. Close returns once no request is using
// the backend any more.
package fuse
