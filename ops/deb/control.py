"""Format-preserving control-file edits: the ``fuse`` -> ``fuse3`` dependency fix and single-field updates.

Everything here takes and returns text (pure). The edit goes through python-debian's format-preserving
deb822 parser, which touches only the relation it changes: substitution variables, folding, the order
of clauses, comments and a missing final newline are kept byte for byte.

Rules of the fuse fix (in every binary paragraph that has a ``Depends`` field):
- a clause names fuse when one of its alternatives is exactly the package ``fuse`` (``fuse-overlayfs``,
  ``libfuse2``, ``fuse3`` are other packages); an architecture qualifier (``fuse:any``) does not matter;
- when a plain ``fuse3`` clause already exists, every clause naming fuse is removed;
- otherwise the first clause naming fuse becomes plain ``fuse3`` (its alternatives and any version on
  fuse are dropped: ``fuse3 | fuse`` lets apt keep fuse 2 and never install fuse3) and later clauses
  naming fuse are removed;
- without any clause naming fuse the paragraph is left as it is.
Running the edit on its own output changes nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from ops.deb.errors import ControlError

FUSE = "fuse"
FUSE3 = "fuse3"

_NAME = re.compile(r"\s*([^\s,|(\[<:]+)")


def split_clauses(value: str) -> list[str]:
    """The comma-separated clauses of a relation field value, stripped, empty ones dropped."""
    return [c.strip() for c in value.replace("\n", " ").split(",") if c.strip()]


def alternative_names(clause: str) -> list[str]:
    """The package names of the alternatives of one relation clause (``a (>= 1) | b:any`` -> a, b).

    Clauses holding a substitution variable (``${shlibs:Depends}``) are returned whole: they name no
    package until they are expanded.
    """
    clause = clause.strip()
    if "${" in clause:
        return [clause]
    names: list[str] = []
    for alt in clause.split("|"):
        names.append(_relation_name(alt))
    return names


def _relation_name(alt: str) -> str:
    from debian.deb822 import PkgRelation

    log = logging.getLogger("debian.deb822")
    previous = log.disabled
    log.disabled = True  # python-debian logs a warning for every relation it cannot parse
    try:
        parsed = PkgRelation.parse_relations(alt.strip())
    finally:
        log.disabled = previous
    name = str(parsed[0][0]["name"]) if parsed and parsed[0] else ""
    if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", name):  # returned raw: fall back to the first word
        match = _NAME.match(alt)
        name = match.group(1) if match else alt.strip()
    return name


def names_fuse(clause: str) -> bool:
    """True when an alternative of the clause is exactly the package ``fuse``."""
    return FUSE in alternative_names(clause)


def is_plain_fuse3(clause: str) -> bool:
    """True when the clause is fuse3 alone (any version), a hard dependency on fuse3."""
    return alternative_names(clause) == [FUSE3]


@dataclass(frozen=True)
class ControlEdit:
    """The result of an edit: the new text, whether it differs, and one line per change made."""

    text: str
    changed: bool
    actions: tuple[str, ...]


def _parse(text: str) -> Any:
    from debian._deb822_repro import parse_deb822_file

    try:
        return parse_deb822_file(text.splitlines(keepends=True), accept_files_with_error_tokens=False)
    except Exception as exc:  # python-debian raises ValueError/SyntaxOrParseError for broken input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ControlError(f"not a valid control file ({first[:200]})", "check the file is in deb822 format") from None


def _dump(deb822_file: Any, original: str) -> str:
    out = str(deb822_file.dump())
    # The parser always ends an edited field with a newline; keep a missing final newline missing.
    if not original.endswith("\n") and out.endswith("\n") and not out.endswith("\n\n"):
        out = out[:-1]
    return out


def _binary_paragraphs(deb822_file: Any) -> list[Any]:
    paragraphs = [p for p in deb822_file if "Package" in p]
    if not paragraphs:
        raise ControlError(
            "the control file has no binary paragraph (no Package: field)",
            "point the edit at deb/sysbox-*/control or a package's DEBIAN/control",
        )
    return paragraphs


def fix_fuse_depends(text: str) -> ControlEdit:
    """Replace the ``fuse`` dependency of every binary paragraph with ``fuse3``, keeping all other bytes."""
    from debian._deb822_repro import LIST_COMMA_SEPARATED_INTERPRETATION

    parsed = _parse(text)
    paragraphs = _binary_paragraphs(parsed)
    with_depends = [p for p in paragraphs if "Depends" in p]
    if not with_depends:
        names = ", ".join(str(p["Package"]).strip() for p in paragraphs)
        raise ControlError(
            f"no Depends field in the binary paragraph of {names}",
            "the control file is not the Sysbox package's (it must have a Depends field)",
        )
    actions: list[str] = []
    for paragraph in with_depends:
        package = str(paragraph["Package"]).strip()
        view = paragraph.as_interpreted_dict_view(LIST_COMMA_SEPARATED_INTERPRETATION)
        depends = view["Depends"]
        with depends:
            refs = list(depends.iter_value_references())
            values = [str(r.value) for r in refs]
            fuse_refs = [r for r, v in zip(refs, values, strict=True) if names_fuse(v)]
            if not fuse_refs:
                continue
            has_fuse3 = any(is_plain_fuse3(v) for v in values)
            if not has_fuse3:
                first = fuse_refs.pop(0)
                actions.append(f"{package}: Depends clause '{first.value}' replaced by '{FUSE3}'")
                first.value = FUSE3
            for ref in fuse_refs:
                actions.append(f"{package}: Depends clause '{ref.value}' removed (fuse3 is already a clause)")
                ref.remove()
    if not actions:
        return ControlEdit(text, False, ())
    new = _dump(parsed, text)
    return ControlEdit(new, new != text, tuple(actions))


def set_field(text: str, field: str, value: str) -> str:
    """Set one field of the (single) binary paragraph, keeping every other byte."""
    parsed = _parse(text)
    paragraph = _binary_paragraphs(parsed)[0]
    if field in paragraph and str(paragraph[field]).strip() == value:
        return text
    paragraph[field] = value
    return _dump(parsed, text)


def binary_fields(text: str) -> dict[str, str]:
    """The fields of the first binary paragraph as plain strings (folded values joined with spaces)."""
    from debian.deb822 import Deb822

    for paragraph in Deb822.iter_paragraphs(text.splitlines(keepends=True)):
        if "Package" in paragraph:
            return {str(k): " ".join(str(v).split()) for k, v in paragraph.items()}
    raise ControlError("the control data has no binary paragraph (no Package: field)", "")
