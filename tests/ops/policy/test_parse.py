"""parse_script: every construct yields the simple commands inside it, words as the shell
would see them, redirects, here-documents and pipeline inputs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from it0.ops.policy.parse import Script, SimpleCommand, Word, decode_ansi_c, parse_script


def parsed(line: str) -> Script:
    script = parse_script(line)
    assert script.error is None, script.error
    return script


def argvs(line: str) -> list[tuple[str, ...]]:
    return [c.argv for c in parsed(line).commands]


def only(line: str) -> SimpleCommand:
    commands = parsed(line).commands
    assert len(commands) == 1, [c.argv for c in commands]
    return commands[0]


def last(line: str) -> SimpleCommand:
    """The outer command: substituted commands come before it, in execution order."""
    return parsed(line).commands[-1]


def word(line: str, index: int = 0) -> Word:
    return last(line).words[index]


# --- constructs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a x | b y |& c", [("a", "x"), ("b", "y"), ("c",)]),
        ("a; b && c || d & e", [("a",), ("b",), ("c",), ("d",), ("e",)]),
        ("a&&b", [("a",), ("b",)]),
        ("a\nb\n\nc", [("a",), ("b",), ("c",)]),
        ("a # b; c\nd", [("a",), ("d",)]),
        ("(a; b)", [("a",), ("b",)]),
        ("{ a; b; }", [("a",), ("b",)]),
        ("! a", [("a",)]),
        ("if a; then b; elif c; then d; else e; fi", [("a",), ("b",), ("c",), ("d",), ("e",)]),
        ("while a; do b; done", [("a",), ("b",)]),
        ("until a; do b; done", [("a",), ("b",)]),
        ("for i in 1 2; do a $i; done", [("a", "$i")]),
        ("select x in 1; do a; done", [("a",)]),
        ("case $x in y) a;; *) b;; esac", [("a",), ("b",)]),
        ("f() { a; }", [("a",)]),
        ("function g { a; }", [("a",)]),
        ("echo $(a)", [("a",), ("echo", "$(a)")]),
        ("echo `a`", [("a",), ("echo", "`a`")]),
        ('echo "x $(a) y"', [("a",), ("echo", "x $(a) y")]),
        ("cat <(a) >(b)", [("a",), ("b",), ("cat", "<(a)", ">(b)")]),
        ("echo ${x:-$(a)}", [("a",), ("echo", "${x:-$(a)}")]),
        ("echo $(( $(a) + 1 ))", [("a",), ("echo", "$(( $(a) + 1 ))")]),
        ("X=$(a) b", [("a",), ("b",)]),
        ("X=$(a)", [("a",), ()]),
        ("export X=$(a)", [("a",), ("export",)]),
        ("[[ -f $(a) ]]", [("a",), ("[[",)]),
        ("for x in $(a); do b; done", [("a",), ("b",)]),
        ("case $(a) in *) ;; esac", [("a",)]),
        ("b > $(a)", [("a",), ("b",)]),
        ("echo $(echo $(a))", [("a",), ("echo", "$(a)"), ("echo", "$(echo $(a))")]),
        ("coproc a", [("coproc", "a")]),
    ],
)
def test_every_construct_yields_its_commands(line: str, expected: list[tuple[str, ...]]) -> None:
    assert argvs(line) == expected


def test_unquoted_heredoc_substitutions_run_but_quoted_ones_do_not() -> None:
    assert argvs("cat <<EOF\n$(a)\nEOF") == [("a",), ("cat",)]
    assert argvs("cat <<'EOF'\n$(a)\nEOF") == [("cat",)]


def test_heredoc_and_herestring_become_stdin_text() -> None:
    assert only("bash <<EOF\nrm x\nEOF").stdin_text == "rm x\n"
    assert only("bash <<'EOF'\nrm $x\nEOF").stdin_text == "rm $x\n"
    assert only("bash <<-EOF\n\trm x\n\tEOF").stdin_text == "rm x\n"
    assert only("bash <<< 'rm x'").stdin_text == "rm x\n"
    assert only("bash").stdin_text is None


def test_pipeline_stages_know_what_feeds_them() -> None:
    curl, tee, sh = parsed("curl x | tee f | sh").commands
    assert curl.upstream == ()
    assert tee.upstream == (curl,)
    assert sh.upstream == (curl, tee)
    inner = parsed("(curl x) | { cd /; sh; }").commands
    assert [c.argv for c in inner[2].upstream] == [("curl", "x")]


def test_pipeline_after_a_heredoc_start_line_is_fed_by_the_heredoc_command() -> None:
    """tree-sitter-bash hangs `| bash` of `cat <<EOF | bash` off the redirect node."""
    cat, bash, rm = parsed("cat <<EOF | bash && rm x\nls\nEOF").commands
    assert cat.argv == ("cat",)
    assert cat.stdin_text == "ls\n"
    assert bash.argv == ("bash",)
    assert bash.upstream == (cat,)
    assert rm.argv == ("rm", "x")


def test_redirect_of_a_list_applies_to_every_command() -> None:
    a, b = parsed("a && b > f").commands
    assert [r.target.value for r in a.redirects if r.target] == ["f"]
    assert [r.target.value for r in b.redirects if r.target] == ["f"]
    grouped = parsed("{ a; b; } 2>> log").commands
    assert all(c.redirects[0].op == ">>" and c.redirects[0].writes for c in grouped)


# --- words ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "rm",
        "r''m",
        '"rm"',
        "'rm'",
        "\\rm",
        "r\\m",
        "'r'\"m\"",
        "$'\\x72\\x6d'",
        "$'\\162\\155'",
        "$'\\u0072m'",
        '$"rm"',
    ],
)
def test_quote_removal_reads_the_name_the_shell_runs(line: str) -> None:
    name = word(f"{line} -rf /")
    assert name.value == "rm"
    assert name.literal


def test_words_keep_spaces_and_escapes_inside_quotes() -> None:
    command = last('echo "a $x  ${y} `z` b" \'c  d\' e\\ f "g\\"h\\$i\\q"')
    assert command.argv[1:] == ("a $x  ${y} `z` b", "c  d", "e f", 'g"h$i\\q')
    assert command.words[1].dynamic
    assert not command.words[2].dynamic


@pytest.mark.parametrize("line", ["$X", "${X}", "$(echo rm)", "`echo rm`", '"$X"', "a$X"])
def test_expansions_make_a_word_dynamic(line: str) -> None:
    assert word(f"{line} -rf /").dynamic


def test_globs_and_brace_expansion() -> None:
    assert word("/???/?m -rf /").glob
    assert not word("'*' x").glob
    assert word("ls *.log", 1).glob
    assert word("ls {a,b}.txt", 1).dynamic
    assert word("ls {1..3}", 1).dynamic
    assert not word("find . -exec rm {} ;", 4).dynamic
    assert not word("ls '{a,b}'", 1).dynamic


def test_substitutions_inside_a_word_are_attached_to_it() -> None:
    command = parsed("ls $(a) `b` c").commands[-1]
    assert [[c.argv for c in w.inner] for w in command.words] == [[], [("a",)], [("b",)], []]


def test_assignments_are_kept_apart_from_words() -> None:
    command = last("A=1 B=$(date) ls -l")
    assert command.argv == ("ls", "-l")
    assert [(name, value.value) for name, value in command.assignments] == [
        ("A", "1"),
        ("B", "$(date)"),
    ]
    assert only("X=1 Y=2").words == ()


def test_decode_ansi_c() -> None:
    assert decode_ansi_c(r"a\tb\n") == "a\tb\n"
    assert decode_ansi_c(r"\x41\101\u00e9\U0001F600") == "AA\u00e9\U0001f600"
    assert decode_ansi_c(r"\'\"\\\?\e") == "'\"\\?\x1b"
    assert decode_ansi_c(r"\cA") == "\x01"


# --- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "op", "writes"),
    [
        ("a > f", ">", True),
        ("a >> f", ">>", True),
        ("a >| f", ">|", True),
        ("a &> f", "&>", True),
        ("a &>> f", "&>>", True),
        ("a <> f", "<>", True),
        ("a 3<> f", "<>", True),
        ("a >& f", ">&", True),
        ("a 2>&1", ">&", False),
        ("a >&2", ">&", False),
        ("a 3>&-", ">&-", False),
        ("a < f", "<", False),
        ("a 0<&3", "<&", False),
    ],
)
def test_redirects_know_whether_they_write(line: str, op: str, writes: bool) -> None:
    (redirect,) = only(line).redirects
    assert redirect.op == op
    assert redirect.writes is writes


def test_redirect_alone_is_a_command_without_words() -> None:
    command = only("> /etc/passwd")
    assert command.words == ()
    assert command.redirects[0].target is not None
    assert command.redirects[0].target.value == "/etc/passwd"


# --- errors and threads -----------------------------------------------------------------------


@pytest.mark.parametrize("line", ['ls "$(', 'echo "x', "if true; then echo", "ls )", "a |"])
def test_parse_errors_are_reported_not_raised(line: str) -> None:
    script = parse_script(line)
    assert script.error is not None
    assert script.commands == ()


def test_empty_and_comment_only_lines_have_no_commands() -> None:
    assert parsed("").commands == ()
    assert parsed("# nothing here").commands == ()


def test_parser_is_per_thread() -> None:
    lines = ["a | b; c $(d)", "for x in 1; do y; done", "bash <<EOF\nz\nEOF"] * 50
    expected = [parse_script(line) for line in lines]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(parse_script, lines)) == expected
