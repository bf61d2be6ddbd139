"""A command line as the shell would run it: every simple command, with its words normalised.

tree-sitter-bash gives the syntax tree; this module flattens it into ``SimpleCommand`` values
in execution order, wherever they hide: pipelines, lists, subshells, ``if``/``while``/
``for``/``case`` and function bodies, ``$(...)``, backticks and ``<(...)`` (also inside
double quotes and here-documents). Words go through quote removal (``r''m``, ``"rm"``,
``\\rm``, ``$'\\x72\\x6d'`` all read ``rm``); a part only known at run time (``$X``,
``$(cmd)``) is kept as its source text and the word is marked ``dynamic``.

Nothing here judges risk: the classifier decides what a command means.
"""

from __future__ import annotations

import posixpath
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

_LANGUAGE = Language(tree_sitter_bash.language())
_local = threading.local()

# the value of these nodes is decided when the command runs
_DYNAMIC = frozenset(
    {
        "simple_expansion",
        "expansion",
        "command_substitution",
        "process_substitution",
        "arithmetic_expansion",
    }
)
_SUBSTITUTIONS = frozenset({"command_substitution", "process_substitution"})
_REDIRECTS = frozenset({"file_redirect", "heredoc_redirect", "herestring_redirect"})
_WRITE_OPS = frozenset({">", ">>", ">|", "&>", "&>>", "<>"})
_DUP_TARGET = re.compile(r"^(?:[0-9]+-?|-)$")
_BRACE = re.compile(r"\{[^{}\s]*(?:,|\.\.)[^{}\s]*\}")
_ANSI_SIMPLE = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}
_ANSI_ESCAPE = re.compile(
    r"\\(?:([abeEfnrtv\\'\"?])|([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{1,4})"
    r"|U([0-9A-Fa-f]{1,8})|c(.))",
    re.DOTALL,
)


def _parser() -> Parser:
    """One parser per thread: a tree-sitter ``Parser`` must not be shared between threads."""
    parser: Parser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = Parser(_LANGUAGE)
    return parser


@dataclass(frozen=True)
class Word:
    """One shell word after quote removal; run-time parts keep their source text."""

    value: str
    raw: str
    dynamic: bool = False
    glob: bool = False  # unquoted *, ? or [ : the shell may replace it by file names
    inner: tuple[SimpleCommand, ...] = ()  # commands substituted inside the word

    @property
    def literal(self) -> bool:
        return not self.dynamic and not self.glob


@dataclass(frozen=True)
class Redirect:
    op: str
    target: Word | None  # None when a file descriptor is duplicated or closed
    fd: str | None = None

    @property
    def writes(self) -> bool:
        """Whether it opens a file for writing (``>&2`` and ``2>&1`` only duplicate)."""
        if self.target is None:
            return False
        if self.op == ">&":
            return not (self.target.literal and _DUP_TARGET.match(self.target.value))
        return self.op in _WRITE_OPS


@dataclass(frozen=True)
class SimpleCommand:
    """One command the shell runs: words (name first), prefix assignments, redirects.

    ``upstream`` are the commands whose output is piped into this one; ``stdin_text`` is
    the content of a here-document or here-string given to it.
    """

    text: str
    words: tuple[Word, ...]
    assignments: tuple[tuple[str, Word], ...] = ()
    redirects: tuple[Redirect, ...] = ()
    upstream: tuple[SimpleCommand, ...] = ()
    stdin_text: str | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        return tuple(w.value for w in self.words)


@dataclass(frozen=True)
class Script:
    """The simple commands of a text in execution order, or why it could not be parsed."""

    commands: tuple[SimpleCommand, ...] = ()
    error: str | None = None


def parse_script(text: str) -> Script:
    """Parse a command line (or a script); never raises on bad input, reports ``error``."""
    source = text.encode("utf-8", errors="surrogatepass")
    root = _parser().parse(source).root_node
    if root.has_error:
        problem = _first_error(root, source)
        if problem is not None:
            return Script(error=problem)
    return Script(tuple(_Walker(source).walk(root)))


def decode_ansi_c(body: str) -> str:
    """The value of ``$'...'`` given what is between the quotes."""

    def one(m: re.Match[str]) -> str:
        simple, octal, hex2, u4, u8, ctrl = m.groups()
        if simple is not None:
            return _ANSI_SIMPLE[simple]
        if octal is not None:
            return chr(int(octal, 8) & 0xFF)
        if ctrl is not None:
            return chr(ord(ctrl) & 0x1F)
        code = int(hex2 or u4 or u8, 16)
        return chr(code) if code <= 0x10FFFF else "\ufffd"

    return _ANSI_ESCAPE.sub(one, body)


def _first_error(root: Node, source: bytes) -> str | None:
    stack = [root]
    while stack:
        node = stack.pop()
        if not node.has_error:
            continue
        if node.is_missing:
            return f"incomplete command: missing {node.type!r} at offset {node.start_byte}"
        if node.is_error and not _is_read_write_redirect(node):
            near = source[node.start_byte : node.start_byte + 30].decode(errors="replace")
            return f"cannot parse the command line at offset {node.start_byte}: {near!r}"
        stack.extend(reversed(node.children))
    return None


def _is_read_write_redirect(node: Node) -> bool:
    """tree-sitter-bash does not know ``<>``: it parses ``<`` and an ERROR holding ``>``."""
    before = node.prev_sibling
    return (
        node.parent is not None
        and node.parent.type == "file_redirect"
        and node.text == b">"
        and before is not None
        and before.type == "<"
    )


def _unescape_unquoted(text: str) -> list[tuple[str, bool]]:
    """Pieces of an unquoted word as (text, quoted): a backslash quotes the next character."""
    if "\\" not in text:
        return [(text, False)]
    pieces: list[tuple[str, bool]] = []
    i, n, start = 0, len(text), 0
    while i < n:
        if text[i] == "\\":
            if start < i:
                pieces.append((text[start:i], False))
            if i + 1 < n and text[i + 1] != "\n":
                pieces.append((text[i + 1], True))
            i += 2
            start = i
        else:
            i += 1
    if start < n:
        pieces.append((text[start:], False))
    return pieces


def _unescape_double(text: str) -> str:
    """Inside double quotes a backslash only escapes $ ` " \\ and newline."""
    if "\\" not in text:
        return text
    return re.sub(r'\\([$`"\\\n])', lambda m: "" if m.group(1) == "\n" else m.group(1), text)


class _Walker:
    def __init__(self, source: bytes) -> None:
        self.source = source

    def text(self, node: Node, start: int | None = None) -> str:
        begin = node.start_byte if start is None else start
        return self.source[begin : node.end_byte].decode("utf-8", errors="replace")

    def walk(
        self,
        node: Node,
        redirects: tuple[Redirect, ...] = (),
        upstream: tuple[SimpleCommand, ...] = (),
    ) -> list[SimpleCommand]:
        """Every simple command under ``node``; ``redirects`` and ``upstream`` come from the
        enclosing statement (a redirected ``{ ...; }`` or a pipeline stage)."""
        kind = node.type
        if kind == "command":
            return self.command(node, redirects, upstream)
        if kind == "redirected_statement":
            return self.redirected(node, redirects, upstream)
        if kind == "pipeline":
            return self.pipeline(node, redirects, upstream)
        if kind in ("variable_assignment", "variable_assignments"):
            return self.assignments(node, redirects)
        if kind in ("declaration_command", "unset_command", "test_command"):
            return self.builtin(node, redirects, upstream)
        if kind in _SUBSTITUTIONS:
            redirects, upstream = (), ()
        found: list[SimpleCommand] = []
        for child in node.named_children:
            found += self.walk(child, redirects, upstream)
        return found

    def pipeline(
        self, node: Node, redirects: tuple[Redirect, ...], upstream: tuple[SimpleCommand, ...]
    ) -> list[SimpleCommand]:
        found: list[SimpleCommand] = []
        for stage in node.named_children:
            found += self.walk(stage, redirects, (*upstream, *found))
        return found

    def redirected(
        self, node: Node, redirects: tuple[Redirect, ...], upstream: tuple[SimpleCommand, ...]
    ) -> list[SimpleCommand]:
        body = node.child_by_field_name("body")
        before: list[SimpleCommand] = []
        own: list[Redirect] = []
        stdin: list[str] = []
        after: list[Node] = []
        for child in node.children_by_field_name("redirect"):
            self.redirect(child, own, before, stdin, after)
        found: list[SimpleCommand] = []
        if body is None:  # `> file` alone still truncates the file
            found.append(SimpleCommand(self.text(node), (), (), (*own, *redirects), upstream))
        elif body.type == "command":
            found += self.command(
                body,
                (*own, *redirects),
                upstream,
                text=self.text(node),
                stdin_text=stdin[-1] if stdin else None,
            )
        else:
            found += self.walk(body, (*own, *redirects), upstream)
        found = before + found
        for extra in after:
            # a pipeline written after a here-document's start line hangs off the redirect
            fed = tuple(found) if extra.type == "pipeline" else ()
            found += self.walk(extra, (), (*upstream, *fed))
        return found

    def redirect(
        self,
        node: Node,
        out: list[Redirect],
        found: list[SimpleCommand],
        stdin: list[str],
        after: list[Node],
    ) -> None:
        """Read one redirect: its target, the commands substituted in it, a here-document's
        text and (a tree-sitter quirk) statements that follow a here-document's start."""
        if node.type == "herestring_redirect":
            content = next(iter(node.named_children), None)
            if content is not None:
                word = self.word(content)
                found += word.inner
                stdin.append(word.value + "\n")
            return
        if node.type == "heredoc_redirect":
            strip_tabs = any(c.type == "<<-" for c in node.children)
            for field_name, child in _named(node):
                if child.type == "heredoc_body":
                    found += self.walk(child)
                    body = self.text(child)
                    stdin.append(re.sub(r"(?m)^\t+", "", body) if strip_tabs else body)
                elif field_name == "redirect" or child.type in _REDIRECTS:
                    self.redirect(child, out, found, stdin, after)
                elif child.type not in ("heredoc_start", "heredoc_end"):
                    after.append(child)
            return
        op = ""
        fd: str | None = None
        target: Word | None = None
        for i, child in enumerate(node.children):
            if child.type == "file_descriptor":
                fd = self.text(child)
            elif child.is_error:
                op += ">"  # `<>`, see _is_read_write_redirect
            elif not child.is_named:
                op += child.type
            elif target is None and node.field_name_for_child(i) == "destination":
                target = self.word(child)
                found += target.inner
        if op.endswith("-") and op != "-":  # `>&-` closes a descriptor
            target = None
        out.append(Redirect(op, target, fd))

    def command(
        self,
        node: Node,
        redirects: tuple[Redirect, ...],
        upstream: tuple[SimpleCommand, ...],
        *,
        text: str | None = None,
        stdin_text: str | None = None,
    ) -> list[SimpleCommand]:
        found: list[SimpleCommand] = []
        words: list[Word] = []
        assignments: list[tuple[str, Word]] = []
        own: list[Redirect] = []
        stdin: list[str] = [] if stdin_text is None else [stdin_text]
        after: list[Node] = []
        for _, child in _named(node):
            if child.type == "variable_assignment":
                name, value = self.assignment(child)
                found += value.inner
                assignments.append((name, value))
            elif child.type in _REDIRECTS:
                self.redirect(child, own, found, stdin, after)
            elif child.type == "command_name":
                word = self.word(child.named_children[0] if child.named_children else child)
                found += word.inner
                words.append(word)
            else:
                word = self.word(child)
                found += word.inner
                words.append(word)
        command = SimpleCommand(
            text if text is not None else self.text(node),
            tuple(words),
            tuple(assignments),
            (*own, *redirects),
            upstream,
            stdin[-1] if stdin else None,
        )
        found.append(command)
        for extra in after:
            fed = (command,) if extra.type == "pipeline" else ()
            found += self.walk(extra, (), (*upstream, *fed))
        return found

    def assignment(self, node: Node) -> tuple[str, Word]:
        name_node = node.child_by_field_name("name")
        value_node = node.child_by_field_name("value")
        name = self.text(name_node) if name_node is not None else ""
        value = self.word(value_node) if value_node is not None else Word("", "")
        return name, value

    def assignments(self, node: Node, redirects: tuple[Redirect, ...]) -> list[SimpleCommand]:
        found: list[SimpleCommand] = []
        pairs: list[tuple[str, Word]] = []
        items = [node] if node.type == "variable_assignment" else node.named_children
        for item in items:
            if item.type == "variable_assignment":
                name, value = self.assignment(item)
                found += value.inner
                pairs.append((name, value))
        found.append(SimpleCommand(self.text(node), (), tuple(pairs), redirects))
        return found

    def builtin(
        self, node: Node, redirects: tuple[Redirect, ...], upstream: tuple[SimpleCommand, ...]
    ) -> list[SimpleCommand]:
        """``export``/``local``/``declare``/``readonly``/``unset`` and ``[[ ... ]]``."""
        keyword = node.children[0].type if node.children else node.type
        found: list[SimpleCommand] = []
        words = [Word(keyword, keyword)]
        pairs: list[tuple[str, Word]] = []
        for child in node.named_children:
            if child.type == "variable_assignment":
                name, value = self.assignment(child)
                found += value.inner
                pairs.append((name, value))
            elif node.type == "test_command":
                found += self.walk(child)
            else:
                word = self.word(child)
                found += word.inner
                words.append(word)
        found.append(
            SimpleCommand(self.text(node), tuple(words), tuple(pairs), redirects, upstream)
        )
        return found

    # --- words ----------------------------------------------------------------------------

    def word(self, node: Node) -> Word:
        pieces: list[tuple[str, bool]] = []
        inner: list[SimpleCommand] = []
        dynamic = self.pieces(node, pieces, inner)
        value = "".join(p for p, _ in pieces)
        unquoted = "".join(p if not quoted else "\0" * len(p) for p, quoted in pieces)
        glob = any(c in unquoted for c in "*?[")
        # brace expansion makes several words out of one: only known after expansion
        dynamic = dynamic or ("{" in unquoted and _BRACE.search(unquoted) is not None)
        return Word(value, self.text(node), dynamic, glob, tuple(inner))

    def pieces(self, node: Node, out: list[tuple[str, bool]], inner: list[SimpleCommand]) -> bool:
        """Append the word's pieces as (text, quoted); True when part of it is dynamic."""
        kind = node.type
        if kind in ("word", "number", "variable_name", "file_descriptor", "test_operator"):
            out.extend(_unescape_unquoted(self.text(node)))
            return False
        if kind == "extglob_pattern":
            out.append((self.text(node), False))
            return False
        if kind == "raw_string":
            out.append((self.text(node)[1:-1], True))
            return False
        if kind == "ansi_c_string":
            out.append((decode_ansi_c(self.text(node)[2:-1]), True))
            return False
        if kind == "string":
            return self.string(node, out, inner)
        if kind == "translated_string":
            dynamic = False
            for child in node.named_children:
                dynamic = self.pieces(child, out, inner) or dynamic
            return dynamic
        if kind == "concatenation":
            dynamic = False
            for child in node.children:
                dynamic = self.pieces(child, out, inner) or dynamic
            return dynamic
        # expansions, substitutions and anything unexpected: known only when it runs
        inner += self.walk(node)
        out.append((self.text(node).lstrip(), True))
        return True

    def string(self, node: Node, out: list[tuple[str, bool]], inner: list[SimpleCommand]) -> bool:
        """A double-quoted string, rebuilt from byte offsets: tree-sitter-bash attaches the
        spaces before an expansion to the expansion node, so its children alone lose them."""
        dynamic = False
        pos = node.start_byte + 1
        for child in node.named_children:
            if child.type == "string_content":
                continue
            raw = self.text(child)
            start = child.start_byte + len(raw.encode()) - len(raw.lstrip().encode())
            if start > pos:
                chunk = self.source[pos:start].decode("utf-8", errors="replace")
                out.append((_unescape_double(chunk), True))
            inner += self.walk(child)
            out.append((self.text(child, start), True))
            dynamic = True
            pos = child.end_byte
        end = node.end_byte - 1
        if end > pos:
            chunk = self.source[pos:end].decode("utf-8", errors="replace")
            out.append((_unescape_double(chunk), True))
        return dynamic


def _named(parent: Node) -> list[tuple[str | None, Node]]:
    """Named children with their field names (looked up by index, which is cheap)."""
    return [
        (parent.field_name_for_child(i), child)
        for i, child in enumerate(parent.children)
        if child.is_named
    ]


# --- how a command reads its arguments --------------------------------------------------------


def normalise_path(value: str) -> str:
    """``//etc/./passwd`` -> ``/etc/passwd``; other words are returned unchanged."""
    if not value or value[0] not in "/~" or any(c.isspace() for c in value):
        return value
    path = posixpath.normpath(value)
    return "/" + path.lstrip("/") if path.startswith("//") else path


def subcommand_index(args: Sequence[str], value_options: frozenset[str]) -> int | None:
    """Where the first argument that is not an option (nor an option's value) is."""
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--":
            return i + 1 if i + 1 < len(args) else None
        elif arg.startswith("-") and arg != "-":
            skip = arg in value_options
        else:
            return i
    return None


def subcommand(args: Sequence[str], value_options: frozenset[str]) -> str | None:
    """The first argument that is not an option (nor an option's value)."""
    at = subcommand_index(args, value_options)
    return None if at is None else args[at]


def flags_present(
    args: Sequence[str], wanted: frozenset[str], value_options: frozenset[str], clusters: bool
) -> frozenset[str]:
    """Which of ``wanted`` appear, as ``--long[=v]``, ``-x`` or inside a cluster ``-xyz``."""
    if not wanted:
        return frozenset()
    found: set[str] = set()
    for arg in args:
        if arg == "--":
            break
        if len(arg) < 2 or arg[0] != "-":
            continue
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name in wanted:
            found.add(name)
        if clusters and not arg.startswith("--"):
            for ch in arg[1:]:
                flag = "-" + ch
                if flag in wanted:
                    found.add(flag)
                if flag in value_options:
                    break
    return frozenset(found)
