package block

import "strings"

// Role says what a child is to its parent. Roles are bits; the rules for
// combining them are in ValidRole.
type Role uint8

const (
	RoleData     Role = 1 << iota // guest data is stored in the child
	RoleMetadata                  // the parent's own metadata is stored there
	RoleFiltered                  // the parent presents exactly the child's data
	RoleCOW                       // unallocated reads fall through to the child
	RolePrimary                   // the child that "is" the parent's storage

	// RoleImage is the usual role of a format driver's single file child.
	RoleImage = RoleData | RoleMetadata | RolePrimary
	// RoleFilter is the role of a filter's only child.
	RoleFilter = RoleFiltered | RolePrimary
)

// ValidRole reports whether r is a meaningful combination: a filtered child
// carries neither data, metadata nor COW, and a COW child is never primary.
func ValidRole(r Role) bool {
	if r&RoleFiltered != 0 && r&(RoleData|RoleMetadata|RoleCOW) != 0 {
		return false
	}
	if r&RoleCOW != 0 && r&(RolePrimary|RoleData|RoleMetadata) != 0 {
		return false
	}
	return true
}

func (r Role) String() string {
	var s []string
	for _, x := range []struct {
		r    Role
		name string
	}{{RoleData, "data"}, {RoleMetadata, "metadata"}, {RoleFiltered, "filtered"}, {RoleCOW, "cow"}, {RolePrimary, "primary"}} {
		if r&x.r != 0 {
			s = append(s, x.name)
		}
	}
	return strings.Join(s, "|")
}

// Perm is a set of things a user of a node may do, or lets others do.
// The bit numbers are those of QEMU's image locking protocol: lock byte
// 100+bit is held by a user that takes the permission, 200+bit by one that
// does not share it. They must not change.
type Perm uint8

const (
	PermConsistentRead Perm = 1 << iota
	PermWrite
	PermWriteUnchanged
	PermResize

	PermAll Perm = PermConsistentRead | PermWrite | PermWriteUnchanged | PermResize
)

// permNames are the QMP names, in the order x-debug-query-block-graph of
// qsd 7.2 lists them (highest bit first).
var permNames = []struct {
	p    Perm
	name string
}{
	{PermResize, "resize"},
	{PermWriteUnchanged, "write-unchanged"},
	{PermWrite, "write"},
	{PermConsistentRead, "consistent-read"},
}

// Names lists the QMP names of the bits in p.
func (p Perm) Names() []string {
	s := []string{}
	for _, x := range permNames {
		if p&x.p != 0 {
			s = append(s, x.name)
		}
	}
	return s
}

func (p Perm) String() string { return strings.Join(p.Names(), ",") }

// lockName is how QEMU's file locking messages name a permission.
func (p Perm) lockName() string {
	switch p {
	case PermConsistentRead:
		return "consistent read"
	case PermWrite:
		return "write"
	case PermWriteUnchanged:
		return "write unchanged"
	case PermResize:
		return "resize"
	}
	return p.String()
}

// LockName is the name QEMU's image-locking messages give a single
// permission bit ("write", "consistent read", ...).
func (p Perm) LockName() string { return p.lockName() }
