package file

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
)

// Image locking speaks QEMU's protocol, so that blockd, qemu-img and qsd
// keep each other out of an image: a user that takes permission bit i
// holds a shared lock on byte 100+i, one that does not share bit i holds
// a shared lock on byte 200+i. To take a permission nobody else may hold
// byte 200+i; to refuse sharing it nobody else may hold byte 100+i. OFD
// locks belong to the open file description, so two nodes on one file
// inside blockd conflict with each other as two processes would.
const (
	lockPermBase   = 100
	lockSharedBase = 200
)

var permBits = []block.Perm{block.PermConsistentRead, block.PermWrite, block.PermWriteUnchanged, block.PermResize}

func ofdLock(fd int, typ int16, off int64) error {
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: off, Len: 1}
	return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
}

// heldByOther reports whether another open file description locks byte off.
func heldByOther(fd int, off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}

// checkLocks tests whether perm/shared can be taken.
func checkLocks(fd int, perm, shared block.Perm) error {
	for i, b := range permBits {
		if perm&b == 0 {
			continue
		}
		held, err := heldByOther(fd, lockSharedBase+int64(i))
		if err != nil {
			return fmt.Errorf("Failed to get \"%s\" lock: %w", b.LockName(), err)
		}
		if held {
			return block.Errorf(block.ErrPermission, "Failed to get \"%s\" lock", b.LockName())
		}
	}
	for i, b := range permBits {
		if shared&b != 0 {
			continue
		}
		held, err := heldByOther(fd, lockPermBase+int64(i))
		if err != nil {
			return fmt.Errorf("Failed to get shared \"%s\" lock: %w", b.LockName(), err)
		}
		if held {
			return block.Errorf(block.ErrPermission, "Failed to get shared \"%s\" lock", b.LockName())
		}
	}
	return nil
}

// applyLocks sets the lock bytes for perm/shared and clears the others.
func applyLocks(fd int, perm, shared block.Perm) error {
	for i, b := range permBits {
		typ := int16(unix.F_UNLCK)
		if perm&b != 0 {
			typ = unix.F_RDLCK
		}
		if err := ofdLock(fd, typ, lockPermBase+int64(i)); err != nil {
			return err
		}
		typ = unix.F_UNLCK
		if shared&b == 0 {
			typ = unix.F_RDLCK
		}
		if err := ofdLock(fd, typ, lockSharedBase+int64(i)); err != nil {
			return err
		}
	}
	return nil
}
