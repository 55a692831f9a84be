"""The file-system helpers on their own, on real files: owner-only creation, atomic replace,
cleanup of temporary files, error wording, mount-table parsing.

The order of fsync, rename and folder fsync is observed with strace in test_durability.py;
these are the fast checks that mutation testing (bench/mutation.py) runs first for fsutil."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tablettracker_backups.errors import StorageError
from tablettracker_backups.fsutil import (
    TEMP_PREFIX,
    WRITEBACK_BYTES,
    Writeback,
    atomic_write_bytes,
    check_writable_dir,
    cleanup_temp_files,
    commit,
    describe_os_error,
    ensure_private_dir,
    filesystem_type,
    iter_chunks,
    open_private,
    remove_quietly,
    temp_path,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.ENOSPC, "no space left on the device holding /b/x"),
        (errno.EDQUOT, "disk quota exceeded writing /b/x"),
        (errno.EFBIG, "file size limit exceeded writing /b/x"),
        (errno.EACCES, "permission denied: cannot write to /b/x"),
        (errno.EPERM, "permission denied: cannot write to /b/x"),
        (errno.EROFS, "permission denied: cannot write to /b/x"),
        (errno.ENOENT, "No such file or directory (/b/x)"),
    ],
)
def test_os_errors_in_one_line(code: int, text: str) -> None:
    assert describe_os_error(OSError(code, os.strerror(code)), Path("/b/x")) == text


def test_an_os_error_without_a_code_is_quoted_as_it_is() -> None:
    assert describe_os_error(OSError("strange"), "/b/x") == "strange (/b/x)"


def test_private_folders(tmp_path: Path) -> None:
    os.umask(0o022)
    deep = tmp_path / "a" / "b"
    ensure_private_dir(deep)
    assert deep.is_dir() and mode(deep) == 0o700
    ensure_private_dir(deep)  # already there: fine
    with pytest.raises(StorageError) as caught:
        ensure_private_dir(tmp_path / "x" / "y", parents=False)
    assert str(caught.value) == f"No such file or directory ({tmp_path / 'x' / 'y'})"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError) as caught:
        ensure_private_dir(blocker)
    assert str(caught.value) == f"{blocker} exists and is not a folder"
    with pytest.raises(StorageError) as caught:
        ensure_private_dir(blocker / "under")
    assert str(caught.value) == f"Not a directory ({blocker / 'under'})"


def test_writable_folders_and_their_parents(tmp_path: Path) -> None:
    away = tmp_path / "unmounted" / "backups"
    with pytest.raises(StorageError) as caught:
        check_writable_dir(away, parents=False)
    assert str(caught.value) == f"{away.parent} does not exist (is its disk mounted?)"
    assert not away.parent.exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError) as caught:
        check_writable_dir(tmp_path / "file" / "backups", parents=False)
    assert (
        str(caught.value)
        == f"{tmp_path / 'file'} is not a folder, so {tmp_path / 'file' / 'backups'} cannot be"
    )
    check_writable_dir(tmp_path / "new", parents=False)
    assert (tmp_path / "new").is_dir()
    check_writable_dir(tmp_path / "p" / "q")
    assert (tmp_path / "p" / "q").is_dir()


def test_temporary_names_are_recognised_and_fresh(tmp_path: Path) -> None:
    names = {temp_path(tmp_path, "x.json") for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.parent == tmp_path
        assert name.name.startswith(TEMP_PREFIX) and name.name.endswith("-x.json")
        assert len(name.name) == len(TEMP_PREFIX) + 8 + 1 + len("x.json")


def test_open_private_is_owner_only_and_never_overwrites(tmp_path: Path) -> None:
    os.umask(0)
    path = tmp_path / "f"
    with open_private(path) as handle:
        handle.write(b"one")
    assert mode(path) == 0o600 and path.read_bytes() == b"one"
    with pytest.raises(StorageError) as caught:
        open_private(path)
    assert str(caught.value) == f"File exists ({path})"
    assert path.read_bytes() == b"one"
    os.umask(0o022)


def test_writeback_nudges_every_few_mebibytes(tmp_path: Path) -> None:
    with (tmp_path / "big").open("wb") as handle:
        writeback = Writeback(handle)
        chunk = b"\0" * (WRITEBACK_BYTES - 1)
        handle.write(chunk)
        writeback.wrote(len(chunk))
        assert (writeback.written, writeback.done) == (WRITEBACK_BYTES - 1, 0)
        handle.write(b"\0")
        writeback.wrote(1)
        assert (writeback.written, writeback.done) == (WRITEBACK_BYTES, WRITEBACK_BYTES)
        handle.write(b"\0" * 10)
        writeback.wrote(10)
        assert (writeback.written, writeback.done) == (WRITEBACK_BYTES + 10, WRITEBACK_BYTES)
    assert (tmp_path / "big").stat().st_size == WRITEBACK_BYTES + 10


def test_commit_renames_into_place_and_cleans_up_on_failure(tmp_path: Path) -> None:
    temp = tmp_path / f"{TEMP_PREFIX}1234-f"
    temp.write_bytes(b"new")
    final = tmp_path / "f"
    final.write_bytes(b"old")
    commit(temp, final)
    assert final.read_bytes() == b"new" and not temp.exists()
    temp.write_bytes(b"newer")
    gone = tmp_path / "gone" / "f"
    with pytest.raises(StorageError) as caught:
        commit(temp, gone)
    assert str(caught.value) == f"No such file or directory ({gone})"
    assert not temp.exists()


def test_atomic_write_leaves_one_private_file(tmp_path: Path) -> None:
    os.umask(0)
    final = tmp_path / "status.json"
    atomic_write_bytes(final, b"{}")
    atomic_write_bytes(final, b'{"a": 1}')
    assert final.read_bytes() == b'{"a": 1}' and mode(final) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
    missing = tmp_path / "nowhere" / "status.json"
    with pytest.raises(StorageError) as caught:
        atomic_write_bytes(missing, b"{}")
    assert str(caught.value) == f"No such file or directory ({missing})"
    os.umask(0o022)


def test_remove_quietly_and_chunks(tmp_path: Path) -> None:
    remove_quietly(tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    remove_quietly(tmp_path / "folder")  # not a file: left alone, no error
    assert (tmp_path / "folder").is_dir()
    (tmp_path / "f").write_bytes(b"0123456789")
    remove_quietly(tmp_path / "f")
    assert not (tmp_path / "f").exists()
    (tmp_path / "g").write_bytes(b"0123456789")
    with (tmp_path / "g").open("rb") as handle:
        assert list(iter_chunks(handle, 4)) == [b"0123", b"4567", b"89"]
    with (tmp_path / "g").open("rb") as handle:
        assert list(iter_chunks(handle)) == [b"0123456789"]


def test_cleanup_removes_only_temporary_files(tmp_path: Path) -> None:
    assert cleanup_temp_files(tmp_path / "missing") == []
    keep = ["backup.json", "tmp-x", f"x{TEMP_PREFIX}y"]
    for name in keep:
        (tmp_path / name).write_text("")
    (tmp_path / f"{TEMP_PREFIX}folder").mkdir()
    leftovers = [tmp_path / f"{TEMP_PREFIX}{n}" for n in ("aaaa-x.db", "bbbb-y.json")]
    for path in leftovers:
        path.write_text("half")
    assert sorted(cleanup_temp_files(tmp_path)) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, f"{TEMP_PREFIX}folder"])


def test_filesystem_type_from_the_mount_table(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_bytes(
        (
            b"rootfs / ext4 rw 0 0\n"
            b"short line\n"
            b"server:/data /mnt/data nfs4 rw 0 0\n"
            b"tmpfs /mnt/data tmpfs rw 0 0\n"  # mounted over it: the later line wins
            b"me@host: /mnt/my\\040files fuse.sshfs rw 0 0\n"
            b"cifs /mnt/database/deep cifs rw 0 0\n"
            b"server:/three /mnt/three nfs\n"  # three fields are enough
            b"box /mnt/BOX ext3 rw 0 0\n"
        )
        + b"bad /mnt/\xff\xfe vfat rw 0 0\n"  # not UTF-8: replaced, never an error
    )
    assert filesystem_type(Path("/mnt/data/x.db"), mounts) == "tmpfs"
    assert filesystem_type(Path("/mnt/data"), mounts) == "tmpfs"
    assert filesystem_type(Path("/mnt/database/x.db"), mounts) == "ext4"  # not /mnt/data
    assert filesystem_type(Path("/mnt/database/deep/x.db"), mounts) == "cifs"
    assert filesystem_type(Path("/mnt/my files/x.db"), mounts) == "fuse.sshfs"
    assert filesystem_type(Path("/mnt/three/x.db"), mounts) == "nfs"
    assert filesystem_type(Path("/mnt/BOX/x.db"), mounts) == "ext3"
    assert filesystem_type(Path("/mnt/data/x.db"), tmp_path / "no-such-file") is None
    only_nfs = tmp_path / "only"
    only_nfs.write_text("server:/data /mnt/data nfs4 rw 0 0\n")
    assert filesystem_type(Path("/elsewhere"), only_nfs) is None


def test_a_full_disk_while_writing_names_the_file_and_leaves_nothing(full_fs: Path) -> None:
    final = full_fs / "status.json"
    with pytest.raises(StorageError) as caught:
        atomic_write_bytes(final, b"x" * (8 * 2**20))  # more than the 6 MiB file system
    assert str(caught.value) == f"no space left on the device holding {final}"
    assert list(full_fs.iterdir()) == []


def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    from tests.faultkit import mount_tmpfs, unmount

    folder = tmp_path / "ro"
    folder.mkdir()
    if not mount_tmpfs(folder, "size=1m,ro"):  # pragma: no cover
        pytest.skip("cannot mount a read-only file system here")
    try:
        with pytest.raises(StorageError) as caught:
            check_writable_dir(folder)
        assert str(caught.value) == f"permission denied: cannot write to {folder}"
    finally:
        unmount(folder)


CRASH_WRITE = """
import sys
from pathlib import Path
from tablettracker_backups.crashpoints import Stage
from tablettracker_backups.fsutil import atomic_write_bytes
stage = Stage.METADATA_WRITE if sys.argv[2] == "staged" else None
atomic_write_bytes(Path(sys.argv[1]), b"{}", crash_stage=stage)
"""


@pytest.mark.parametrize("staged", ["staged", "unstaged"])
def test_the_crash_point_sits_between_fsync_and_rename(tmp_path: Path, staged: str) -> None:
    import subprocess
    import sys

    final = tmp_path / "b.json"
    checkout = Path(__file__).resolve().parent.parent  # wherever pytest was started
    env = {**os.environ, "TTB_CRASH_AT": "metadata-write", "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", CRASH_WRITE, str(final), staged],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if staged == "staged":  # killed with the temporary file written, nothing renamed
        assert done.returncode == -9, done.stderr
        assert not final.exists()
        (left,) = tmp_path.iterdir()
        assert left.name.startswith(TEMP_PREFIX) and left.read_bytes() == b"{}"
    else:  # a write that names no stage never stops there
        assert done.returncode == 0, done.stderr
        assert final.read_bytes() == b"{}"
