package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"syscall"
)

// Linux constants the syscall package lacks.
const (
	seekData = 3          // SEEK_DATA
	seekHole = 4          // SEEK_HOLE
	ficlone  = 0x40049409 // FICLONE: share src's extents with dst (btrfs, xfs)
)

// copyPath copies a volume or snapshot (a file or a directory tree) from src to dst, which must
// not exist yet. It writes into dst+".tmp" and renames, so dst appears whole or not at all.
func copyPath(src, dst string) error {
	tmp := dst + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	info, err := os.Lstat(src)
	if err != nil {
		return err
	}
	if info.IsDir() {
		err = copyTree(src, tmp)
	} else {
		err = copyFile(src, tmp, info)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.RemoveAll(tmp)
	}
	return err
}

// copyTree copies a directory tree, keeping modes, owners and times; files stay sparse.
// Sockets, fifos and device nodes are skipped: a volume's data is files.
func copyTree(src, dst string) error {
	type dir struct {
		path string
		info fs.FileInfo
	}
	var dirs []dir
	err := filepath.WalkDir(src, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := entry.Info()
		if err != nil {
			return err
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			dirs = append(dirs, dir{target, info})
			return os.Mkdir(target, 0o700)
		case mode.IsRegular():
			if err := copyFile(path, target, info); err != nil {
				return err
			}
		case mode&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		default:
			log.Printf("copying %s: skipping %s (%s)", src, rel, mode.Type())
			return nil
		}
		return copyMetadata(target, info)
	})
	// Directories last, deepest first: writing their entries would change their times.
	for i := len(dirs) - 1; err == nil && i >= 0; i-- {
		err = copyMetadata(dirs[i].path, dirs[i].info)
	}
	return err
}

// copyMetadata gives target the owner, mode and times of info.
func copyMetadata(target string, info fs.FileInfo) error {
	st, ok := info.Sys().(*syscall.Stat_t)
	if ok {
		if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		return nil
	}
	if err := os.Chmod(target, info.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		return err
	}
	return os.Chtimes(target, info.ModTime(), info.ModTime())
}

// copyFile copies a regular file, sparse: by reflink where the filesystem can, else only its
// data extents (SEEK_DATA/SEEK_HOLE), so a mostly empty 10 GiB disk image copies in
// milliseconds and stays mostly empty.
func copyFile(src, dst string, info fs.FileInfo) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = cloneOrCopy(in, out, info.Size())
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	return copyMetadata(dst, info)
}

func cloneOrCopy(in, out *os.File, size int64) error {
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, out.Fd(), ficlone, in.Fd())
	if errno == 0 {
		return nil
	}
	if err := copyExtents(in, out, size); err != nil {
		return err
	}
	return out.Truncate(size)
}

// copyExtents copies the data ranges of in to the same offsets of out, leaving holes as holes.
func copyExtents(in, out *os.File, size int64) error {
	for offset := int64(0); offset < size; {
		start, err := in.Seek(offset, seekData)
		if errors.Is(err, syscall.ENXIO) { // no data after offset
			return nil
		}
		if err != nil {
			return err
		}
		end, err := in.Seek(start, seekHole)
		if err != nil {
			return err
		}
		if _, err := in.Seek(start, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(start, io.SeekStart); err != nil {
			return err
		}
		// *os.File.ReadFrom uses copy_file_range, which may share extents itself.
		if _, err := io.CopyN(out, in, end-start); err != nil {
			return err
		}
		offset = end
	}
	return nil
}

// allocatedBytes is how much disk a file or tree really uses (its blocks, not its sizes).
func allocatedBytes(path string) int64 {
	var total int64
	filepath.WalkDir(path, func(_ string, entry fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := entry.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
		return nil
	})
	return total
}
