"""Read the MSL kernels (csrc/metal/*.metal) as text: each kernel's parameters with their attributes, and
the `threadgroup T name[..];` declarations. Used by shim_build.py (to rewrite the sources for the CPU shim
and to generate the code that binds each parameter by its attribute) and by the static tests.

Only the Metal attributes the shim implements are accepted; any other `[[...]]` in a kernel source is an
error (a misspelt attribute would otherwise be ignored by a C++ compiler and bound by position)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# attribute -> the shim value it binds (see BUILTIN_VALUES in shim_build.py); buffer(n) separately
BUILTINS = (
    "threadgroup_position_in_grid",
    "thread_position_in_threadgroup",
    "thread_position_in_grid",
    "threads_per_threadgroup",
    "threadgroups_per_grid",
    "thread_index_in_threadgroup",
    "thread_index_in_simdgroup",
    "simdgroup_index_in_threadgroup",
)

ATTR = re.compile(r"\[\[\s*([^\]]*?)\s*\]\]")
BUFFER = re.compile(r"buffer\(\s*(\d+)\s*\)$")
KERNEL = re.compile(r"^kernel\s+void\s+(\w+)\s*\((.*?)\)\s*\{", re.S | re.M)
PARAM = re.compile(r"^(?P<type>.*?[\s*&])(?P<name>\w+)\s*\[\[\s*(?P<attr>[^\]]*?)\s*\]\]$", re.S)
TG_DECL = re.compile(r"^(?P<indent>[ \t]*)threadgroup\s+(?P<type>\w+)\s+(?P<name>\w+)\s*(?P<dims>(?:\[[^\]]+\])+)\s*;",
                     re.M)


class MslError(ValueError):
    """A kernel source the shim cannot take as it is (unknown attribute, unbound parameter, ...)."""


@dataclass
class Param:
    type: str          # as written, e.g. "device const float*", "constant SsdParams&", "uint3"
    name: str
    attr: str          # "buffer" or one of BUILTINS
    index: int = -1    # n of [[buffer(n)]]


@dataclass
class Kernel:
    name: str
    file: str
    params: list

    def buffer_indices(self) -> list:
        return [p.index for p in self.params if p.attr == "buffer"]


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    return re.sub(r"//[^\n]*", lambda m: " " * len(m.group(0)), text)


def check_attributes(text: str, filename: str) -> None:
    """Every `[[...]]` must be a kernel-parameter attribute the shim knows."""
    for m in ATTR.finditer(_strip_comments(text)):
        a = m.group(1)
        if not (BUFFER.match(a) or a in BUILTINS):
            line = text.count("\n", 0, m.start()) + 1
            raise MslError(f"{filename}:{line}: attribute [[{a}]] is not one the Metal shim knows "
                           f"(buffer(n), {', '.join(BUILTINS)})")


def kernels(text: str, filename: str = "<msl>") -> list:
    """The kernels of one source, parameters in declaration order."""
    check_attributes(text, filename)
    out = []
    for m in KERNEL.finditer(_strip_comments(text)):
        params = []
        for raw in m.group(2).split(","):
            raw = " ".join(raw.split())
            pm = PARAM.match(raw)
            if pm is None:
                raise MslError(f"{filename}: kernel {m.group(1)}: parameter {raw!r} has no attribute")
            attr = pm.group("attr")
            b = BUFFER.match(attr)
            params.append(Param(pm.group("type").strip(), pm.group("name"), "buffer" if b else attr,
                                int(b.group(1)) if b else -1))
        out.append(Kernel(m.group(1), filename, params))
    return out


def all_kernels(src_dir: Path) -> dict:
    """{name: Kernel} over every .metal file of src_dir."""
    out = {}
    for f in sorted(Path(src_dir).glob("*.metal")):
        for k in kernels(f.read_text(), f.name):
            if k.name in out:
                raise MslError(f"kernel {k.name} defined twice ({out[k.name].file}, {k.file})")
            out[k.name] = k
    return out


def rewrite_for_shim(text: str, filename: str, first_slot: int) -> tuple:
    """The source as the shim compiles it: each `threadgroup T name[A][B];` becomes per-group storage from
    the runtime (`auto name = ::shim::tg_array<T, A, B>(slot, "name");`), and the known attributes are
    stripped (the generated binder passes every parameter by its attribute), and every `device T*` becomes
the runtime's checked pointer (device_pointers). Returns (text, next slot)."""
    check_attributes(text, filename)
    slot = first_slot

    def decl(m):
        nonlocal slot
        dims = ", ".join(d.strip() for d in re.findall(r"\[([^\]]+)\]", m.group("dims")))
        slot += 1
        return (f'{m.group("indent")}auto {m.group("name")} = ::shim::tg_array<{m.group("type")}, {dims}>'
                f'({slot - 1}, "{m.group("name")}");')

    text = TG_DECL.sub(decl, text)
    text = ATTR.sub(lambda m: "", text)
    return device_pointers(text), slot


DEVICE_PTR = re.compile(r"\b(?:device\s+const|const\s+device)\s+(\w+)\s*\*|\bdevice\s+(\w+)\s*\*")


def device_pointers(text: str) -> str:
    """`device [const] T*` / `const device T*` -> the runtime's checked pointer ::shim::dptr<[const] T>."""
    return DEVICE_PTR.sub(lambda m: f"::shim::dptr<const {m.group(1)}> " if m.group(1)
                          else f"::shim::dptr<{m.group(2)}> ", text)
