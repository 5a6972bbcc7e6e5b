"""release_compiler_memory drops the compiler's code pages and nothing else, and they read back intact."""

import mmap

from otelbpf.probes import release_compiler_memory


def test_the_compilers_code_pages_are_dropped_and_read_back_from_the_file(tmp_path):
    content = bytes(range(256)) * 64  # 16 KiB: four pages
    lib = tmp_path / "libLLVM-14.so.1"
    lib.write_bytes(content)
    other = tmp_path / "libkeep.so.1"
    other.write_bytes(content)
    with lib.open("rb") as f, other.open("rb") as g:
        code = mmap.mmap(f.fileno(), len(content), prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE)
        kept = mmap.mmap(g.fileno(), len(content), prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE)
    try:
        assert code[:] == content and kept[:] == content  # resident
        assert release_compiler_memory() >= len(content)
        assert code[:] == content  # faulted in again from the file
        assert kept[:] == content
    finally:
        code.close()
        kept.close()


def test_an_unreadable_maps_file_releases_nothing(tmp_path):
    assert release_compiler_memory(str(tmp_path / "no-such-maps")) == 0


def test_only_code_of_compiler_libraries_is_touched(tmp_path):
    maps = tmp_path / "maps"
    # Addresses that are not mapped: any madvise on them would fail, so 0 means none was attempted.
    maps.write_text(
        "7f0000000000-7f0000001000 r--p 00000000 08:01 1 /usr/lib/libLLVM-14.so.1\n"
        "7f0000001000-7f0000002000 rw-p 00000000 08:01 1 /usr/lib/libLLVM-14.so.1\n"
        "7f0000002000-7f0000003000 r-xp 00000000 08:01 2 /usr/lib/libc.so.6\n"
        "7f0000003000-7f0000004000 r-xp 00000000 00:00 0\n"
    )
    assert release_compiler_memory(str(maps)) == 0
