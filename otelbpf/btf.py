"""A small pure-Python reader for the kernel's BTF (BPF Type Format) type information.

The running kernel can differ from the installed kernel headers, so struct layouts (e.g. where
``skc_daddr`` sits in ``struct sock``) must come from the running kernel's own BTF at
``/sys/kernel/btf/vmlinux``. This module reads that blob without bpftool, libbpf or a compiler.

Only what otelbpf needs is decoded: on load, one pass records where each type record starts and
indexes named STRUCT/UNION types; members are decoded on demand. The format is documented in the
kernel tree at ``Documentation/bpf/btf.rst``.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

BTF_MAGIC = 0xEB9F

# Type kinds (BTF_KIND_*), as numbered in include/uapi/linux/btf.h.
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

KIND_NAMES = {
    KIND_INT: "int",
    KIND_PTR: "ptr",
    KIND_ARRAY: "array",
    KIND_STRUCT: "struct",
    KIND_UNION: "union",
    KIND_ENUM: "enum",
    KIND_FWD: "fwd",
    KIND_TYPEDEF: "typedef",
    KIND_VOLATILE: "volatile",
    KIND_CONST: "const",
    KIND_RESTRICT: "restrict",
    KIND_FUNC: "func",
    KIND_FUNC_PROTO: "func_proto",
    KIND_VAR: "var",
    KIND_DATASEC: "datasec",
    KIND_FLOAT: "float",
    KIND_DECL_TAG: "decl_tag",
    KIND_TYPE_TAG: "type_tag",
    KIND_ENUM64: "enum64",
}

# Trailing bytes after the 12-byte struct btf_type: (fixed, per vlen entry).
_TRAILING: dict[int, tuple[int, int]] = {
    KIND_INT: (4, 0),
    KIND_PTR: (0, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0),
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 12),
}

# Kinds that only qualify another type; looking through them never changes layout.
_MODIFIERS = frozenset({KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})

_HEADER_SIZE = 24  # the fixed part of struct btf_header; hdr_len may announce a longer one
_POINTER_SIZE = 8  # BTF does not record it; otelbpf only targets 64-bit kernels


class BtfError(Exception):
    """Raised for malformed BTF data or a struct/member that cannot be resolved."""


@dataclass(frozen=True, slots=True)
class BtfMember:
    """One decoded STRUCT/UNION member; offsets are in bits from the start of the parent."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0 unless the member is declared as a bitfield


class Btf:
    """Parsed BTF type information, with byte offsets of (nested) struct members on demand."""

    def __init__(self, data: bytes, *, source: str = "<bytes>") -> None:
        """Parse the BTF header and index the type section of ``data``."""
        self._source = source
        self._data = data
        if len(data) < _HEADER_SIZE:
            raise BtfError(f"{source}: too short for a BTF header ({len(data)} bytes)")
        # The magic is written in the producer's byte order; reading it little-endian tells us which.
        (magic,) = struct.unpack_from("<H", data, 0)
        if magic == BTF_MAGIC:
            self._endian = "<"
        elif magic == 0x9FEB:
            self._endian = ">"
        else:
            raise BtfError(f"{source}: bad BTF magic 0x{magic:04x} (expected 0x{BTF_MAGIC:04x})")
        e = self._endian
        _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            e + "HBBIIIII", data, 0
        )
        if version != 1:
            raise BtfError(f"{source}: unsupported BTF version {version}")
        types_start = hdr_len + type_off
        strs_start = hdr_len + str_off
        if types_start + type_len > len(data) or strs_start + str_len > len(data):
            raise BtfError(f"{source}: BTF sections extend past the end of the data")
        self._types = memoryview(data)[types_start : types_start + type_len]
        self._strs = data[strs_start : strs_start + str_len]
        self._type_hdr = struct.Struct(e + "III")
        self._member = struct.Struct(e + "III")
        self._u32 = struct.Struct(e + "I")
        self._array = struct.Struct(e + "III")
        # _offsets[i] is where type id i+1 starts in the type section (id 0 is the implicit void).
        self._offsets = array("I")
        self._structs: dict[str, int] = {}
        self._duplicate_names: set[str] = set()
        self._index()

    @classmethod
    def load(cls, path: str | Path = DEFAULT_VMLINUX_BTF) -> Btf:
        """Read and parse a BTF file, by default the running kernel's."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise BtfError(f"kernel BTF not found at {path} (CONFIG_DEBUG_INFO_BTF is needed)") from None
        except OSError as exc:
            raise BtfError(f"cannot read kernel BTF at {path}: {exc}") from exc
        return cls(data, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes) -> Btf:
        """Parse BTF from an in-memory blob."""
        return cls(bytes(data))

    # -- loading ------------------------------------------------------------------------------

    def _index(self) -> None:
        """Walk every type record once, remembering its start and indexing named structs/unions."""
        types = self._types
        end = len(types)
        unpack = self._type_hdr.unpack_from
        offsets = self._offsets
        structs = self._structs
        trailing = _TRAILING
        strs = self._strs
        dupes = self._duplicate_names
        pos = 0
        # Locals and a flat loop keep this ~0.1 s for the ~150k types of a vmlinux BTF.
        while pos < end:
            if pos + 12 > end:
                raise BtfError(f"{self._source}: truncated type record at offset {pos}")
            name_off, info, _size = unpack(types, pos)
            kind = (info >> 24) & 0x1F
            try:
                fixed, per = trailing[kind]
            except KeyError:
                raise BtfError(f"{self._source}: unknown BTF kind {kind} for type id {len(offsets) + 1}") from None
            offsets.append(pos)
            if (kind == KIND_STRUCT or kind == KIND_UNION) and name_off:
                name = strs[name_off : strs.index(b"\0", name_off)].decode()
                # A few file-local structs share a name (e.g. two different "struct console").
                # Keep the first, as bpftool's C dump does (it renames later ones name___2), and
                # remember the clash so a failed lookup can say which definition was used.
                if name in structs:
                    dupes.add(name)
                else:
                    structs[name] = len(offsets)
            pos += 12 + fixed + per * (info & 0xFFFF)
        if pos != end:
            raise BtfError(f"{self._source}: type section does not end on a record boundary")

    # -- low-level accessors ------------------------------------------------------------------

    @property
    def type_count(self) -> int:
        """Number of types, not counting the implicit void (id 0)."""
        return len(self._offsets)

    def _name(self, name_off: int) -> str:
        if name_off >= len(self._strs):
            raise BtfError(f"{self._source}: string offset {name_off} out of range")
        return self._strs[name_off : self._strs.index(b"\0", name_off)].decode()

    def _header(self, type_id: int) -> tuple[int, int, int, int, int, int]:
        """Return (pos, name_off, kind, vlen, kind_flag, size_or_type) for a type id."""
        if not 1 <= type_id <= len(self._offsets):
            raise BtfError(f"{self._source}: type id {type_id} out of range")
        pos = self._offsets[type_id - 1]
        name_off, info, size_or_type = self._type_hdr.unpack_from(self._types, pos)
        return pos, name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def kind(self, type_id: int) -> int:
        """BTF_KIND_* of a type id (0, i.e. void, reports 0)."""
        return 0 if type_id == 0 else self._header(type_id)[2]

    def type_name(self, type_id: int) -> str:
        """Name of a type id ('' for anonymous types and void)."""
        return "" if type_id == 0 else self._name(self._header(type_id)[1])

    def struct_id(self, name: str) -> int:
        """Type id of the named struct or union."""
        try:
            return self._structs[name]
        except KeyError:
            raise BtfError(f"{self._source}: no struct or union named {name!r}") from None

    def resolve(self, type_id: int) -> int:
        """Follow typedef/const/volatile/restrict/type_tag to the underlying type id."""
        for _ in range(64):  # bounded, so a malformed cyclic chain cannot hang us
            if type_id == 0:
                return 0
            _pos, _n, kind, _v, _kf, ref = self._header(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = ref
        raise BtfError(f"{self._source}: modifier chain too long at type id {type_id}")

    def members(self, type_id: int) -> list[BtfMember]:
        """Decode the members of a STRUCT or UNION type id."""
        pos, _name_off, kind, vlen, kind_flag, _size = self._header(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BtfError(f"{self._source}: type id {type_id} is a {KIND_NAMES.get(kind)}, not a struct")
        unpack = self._member.unpack_from
        out = []
        pos += 12
        for _ in range(vlen):
            name_off, mtype, offset = unpack(self._types, pos)
            pos += 12
            if kind_flag:
                # With kind_flag set the offset word packs the bitfield size into the top 8 bits.
                bit_offset, bitfield_size = offset & 0xFFFFFF, offset >> 24
            else:
                bit_offset, bitfield_size = offset, 0
            out.append(BtfMember(self._name(name_off) if name_off else "", mtype, bit_offset, bitfield_size))
        return out

    def type_size(self, type_id: int) -> int:
        """Byte size of a type id, resolving modifiers; pointers count as 8 bytes."""
        for _ in range(64):
            if type_id == 0:
                raise BtfError(f"{self._source}: void has no size")
            pos, _n, kind, _v, _kf, size_or_type = self._header(type_id)
            if kind in _MODIFIERS:
                type_id = size_or_type
                continue
            if kind == KIND_PTR:
                return _POINTER_SIZE
            if kind == KIND_ARRAY:
                elem_type, _index_type, nelems = self._array.unpack_from(self._types, pos + 12)
                return nelems * self.type_size(elem_type)
            if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT, KIND_DATASEC):
                return size_or_type
            raise BtfError(f"{self._source}: type id {type_id} ({KIND_NAMES.get(kind)}) has no size")
        raise BtfError(f"{self._source}: modifier chain too long at type id {type_id}")

    def _is_int_bitfield(self, type_id: int) -> bool:
        """True if an INT type encodes a bitfield itself (the pre-kind_flag bitfield encoding)."""
        type_id = self.resolve(type_id)
        if type_id == 0:
            return False
        pos, _n, kind, _v, _kf, size = self._header(type_id)
        if kind != KIND_INT:
            return False
        (encoding,) = self._u32.unpack_from(self._types, pos + 12)
        bits, int_offset = encoding & 0xFF, (encoding >> 16) & 0xFF
        return int_offset != 0 or bits != size * 8

    # -- member lookup ------------------------------------------------------------------------

    def _find_member(self, type_id: int, name: str) -> tuple[int, BtfMember] | None:
        """Find ``name`` in a struct/union, looking inside anonymous members; returns (bit offset, member)."""
        for member in self.members(type_id):
            if member.name == name:
                return member.bit_offset, member
            if not member.name:
                # Anonymous struct/union members make their fields directly accessible in C.
                inner = self.resolve(member.type_id)
                if inner and self.kind(inner) in (KIND_STRUCT, KIND_UNION):
                    found = self._find_member(inner, name)
                    if found is not None:
                        return member.bit_offset + found[0], found[1]
        return None

    def _lookup(self, struct_name: str, member_path: str) -> tuple[int, BtfMember]:
        """Resolve a dotted member path; returns (bit offset from the struct start, final member)."""
        parts = member_path.split(".")
        if not member_path or any(not p for p in parts):
            raise BtfError(f"invalid member path {member_path!r} for struct {struct_name!r}")
        type_id = self.struct_id(struct_name)
        where = f"struct {struct_name}"
        bit_offset = 0
        member: BtfMember | None = None
        for i, part in enumerate(parts):
            if member is not None:
                type_id = self.resolve(member.type_id)
                if type_id == 0 or self.kind(type_id) not in (KIND_STRUCT, KIND_UNION):
                    raise BtfError(
                        f"{where}.{'.'.join(parts[:i])} is not a struct or union, cannot look up {part!r} in it"
                    )
            found = self._find_member(type_id, part)
            if found is None:
                container = where if i == 0 else f"{where}.{'.'.join(parts[:i])}"
                note = ""
                if struct_name in self._duplicate_names:
                    first = self._structs[struct_name]
                    note = f" (several structs are named {struct_name!r}; the first, type id {first}, was used)"
                raise BtfError(f"{container} has no member {part!r}{note}")
            bit_offset += found[0]
            member = found[1]
        assert member is not None
        return bit_offset, member

    def member_offset(self, struct_name: str, member_path: str) -> int:
        """Byte offset of a possibly nested member ("a.b.c") from the start of ``struct_name``."""
        bit_offset, member = self._lookup(struct_name, member_path)
        if member.bitfield_size or bit_offset % 8 or self._is_int_bitfield(member.type_id):
            raise BtfError(f"struct {struct_name} member {member_path!r} is a bitfield; it has no byte offset")
        return bit_offset // 8

    def member_size(self, struct_name: str, member_path: str) -> int:
        """Byte size of a possibly nested member's type (pointers are 8 bytes)."""
        _bit_offset, member = self._lookup(struct_name, member_path)
        if member.bitfield_size or self._is_int_bitfield(member.type_id):
            raise BtfError(f"struct {struct_name} member {member_path!r} is a bitfield; it has no byte size")
        return self.type_size(member.type_id)

    def member_type(self, struct_name: str, member_path: str) -> int:
        """Type id of a possibly nested member, as declared (modifiers not resolved)."""
        return self._lookup(struct_name, member_path)[1].type_id

    def struct_size(self, name: str) -> int:
        """Byte size of the named struct or union."""
        return self.type_size(self.struct_id(name))
