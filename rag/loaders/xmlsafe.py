"""XML from inside documents, parsed without trusting it.

Entity declarations are refused, so no billion-laughs or quadratic-blowup expansion can happen;
external entities and DTDs are never fetched; trees are only built of small parts, and with
bounded nesting; the input is fed in blocks, so
a parse never holds more than one block of a member. (defusedxml does the same for ElementTree;
expat itself gives all we need, so it costs no dependency.)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from xml.etree import ElementTree
from xml.parsers import expat

MAX_DEPTH = 2_000  # Word nests tables in tables, EPUB packages are shallow; nothing real nears this


class UnsafeXml(ValueError):
    """XML that is malformed, declares entities or nests too deep; str() says which, as a phrase
    to follow the part's name ("word/document.xml is not valid XML (...)")."""


StartHandler = Callable[[str, dict[str, str]], None]
EndHandler = Callable[[str], None]
TextHandler = Callable[[str], None]


def parse(blocks: Iterable[bytes], start: StartHandler, end: EndHandler, data: TextHandler) -> None:
    """Streams `blocks` through expat, calling `start(name, attributes)`, `end(name)` and
    `data(text)` with names as expat gives them, "namespace}local" (see `expat_name`); raises
    `UnsafeXml` for anything but well-formed, entity-free XML. The handlers are called directly,
    as they are on every element of a large document; they keep no state per level, so nesting
    costs them nothing."""
    parser = expat.ParserCreate(namespace_separator="}")

    def refuse_entities(*_args) -> None:
        raise UnsafeXml("declares XML entities, which Folio does not expand")

    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.EntityDeclHandler = refuse_entities
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    parser.buffer_text = True  # one call per run of text, not one per line
    try:
        for block in blocks:
            parser.Parse(block, False)
        parser.Parse(b"", True)
    except expat.ExpatError as e:
        raise UnsafeXml(f"is not valid XML ({expat.ErrorString(e.code)})") from None


def expat_name(namespace: str, local: str) -> str:
    return f"{namespace}}}{local}"


def parse_tree(blocks: Iterable[bytes]) -> ElementTree.Element:
    """A small XML part (a package manifest, relationships) as an ElementTree element, with
    names in Clark notation ("{namespace}local") and at most `MAX_DEPTH` levels."""
    builder = ElementTree.TreeBuilder()
    depth = 0

    def start(name: str, attributes: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise UnsafeXml(f"nests elements more than {MAX_DEPTH:,} deep")
        builder.start(_clark(name), {_clark(k): v for k, v in attributes.items()})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_clark(name))

    parse(blocks, start, end, builder.data)
    return builder.close()


def _clark(name: str) -> str:
    return "{" + name if "}" in name else name
