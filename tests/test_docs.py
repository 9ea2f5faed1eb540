"""The manual against the code: README.md and every docs/**/*.md.

- every `make X` shown (code blocks and inline code) is a target of the Makefile or a
  file it includes (docker/docker.mk); `sweep-NAME` matches the pattern rule `sweep-%`
  only when sweeps/NAME.yaml exists (dashes read as underscores, as the rule does);
- every `gensweep ...`, `python -m sweeps ...`, `python -m analysis ...` and
  `python -m bench ...` shown parses with that program's own argparse parser;
- every spec path named (sweeps/*.yaml, examples/...) exists, and so does every repository
  path written alone in inline code (`trainables/engine.py`);
- relative links and their #anchors resolve;
- docs/performance.md keeps the block that `make bench` rewrites.

Placeholders in commands are read as such: an upper-case word (SPEC, NAME, JOB) is any
value, `<study>` is any name, `...` is more of the same, `[--opt a|b]` is optional with
alternatives a or b (each alternative must parse). A bare subcommand in running text
(`gensweep run`) needs only to name a real subcommand. The last test feeds the checks a
page full of mistakes, so a check that stops catching them fails too.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

# Where each program's parser is built. gensweep and python -m sweeps are one CLI.
PARSERS = {"gensweep": "sweeps.cli:build_parser", "sweeps": "sweeps.cli:build_parser",
           "analysis": "analysis.__main__:build_parser", "bench": "bench.__main__:build_parser"}
# Spec file names used as examples of "your spec" (sweeps/my.yaml), not as real specs.
PLACEHOLDER_SPEC_STEMS = {"my", "x"}
# Top-level folders whose paths, written alone in inline code, must exist.
REPO_DIRS = ("sweeps", "trainables", "analysis", "bench", "tests", "docker", "data", "docs", "examples")
PROFILES = {"quick", "smoke", "cpu"}

PROGRAM = re.compile(r"^(?:\S*/)?(?:(?P<make>make)|(?P<gensweep>gensweep)"
                     r"|python3?(?:\.\d+)?\s+-m\s+(?P<module>sweeps|analysis|bench))(?=\s|$)")
PLACEHOLDER_WORD = re.compile(r"(?<![A-Za-z0-9])[A-Z][A-Z0-9_]*(?![a-z0-9])")
SEPARATORS = re.compile(r"\s(?:&&|\|\||;|\|)\s")
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
SPEC_PATH = re.compile(r"(?<![\w./-])((?:sweeps|examples)/[\w./<>*-]*\.ya?ml)(?![\w.-])")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    program: str  # make, gensweep, sweeps, analysis, bench
    args: tuple[str, ...]
    inline: bool  # in running text (inline code) rather than a code block

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.program} {' '.join(self.args)}".rstrip()


# -- reading the pages ------------------------------------------------------------------

def split_page(text: str) -> tuple[list[tuple[int, str]], str]:
    """(code-block lines as (line number, line), the text outside code blocks with the
    blocks blanked out so that line numbers still count). Lines ending in a backslash
    are joined with the next, as a shell does; yaml/json/python blocks are skipped."""
    block_lines, prose, fence, skip = [], [], None, False
    for number, line in enumerate(text.splitlines(), 1):
        marker = re.match(r"^\s*(```+|~~~+)\s*([\w-]*)", line)
        if fence is None and marker:
            fence, skip = marker.group(1), marker.group(2).lower() in ("yaml", "yml", "json", "python", "py")
            prose.append("")
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            elif not skip:
                if block_lines and block_lines[-1][1].endswith("\\"):
                    block_lines[-1] = (block_lines[-1][0], block_lines[-1][1][:-1] + " " + line.strip())
                else:
                    block_lines.append((number, line))
            prose.append("")
            continue
        prose.append(line)
    return block_lines, "\n".join(prose)


def inline_code(prose: str) -> list[tuple[int, str]]:
    return [(prose.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split())) for m in INLINE_CODE.finditer(prose)]


def commands_in(page: str, text: str) -> list[Command]:
    block_lines, prose = split_page(text)
    found = []
    for inline, pieces in ((False, block_lines), (True, inline_code(prose))):
        for number, code in pieces:
            for segment in SEPARATORS.split(code):
                segment = re.sub(r"^\s*\$\s+", "", segment).strip()
                segment = re.sub(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+", "", segment)  # FOO=bar cmd
                match = PROGRAM.match(segment)
                if not match:
                    continue
                program = match.group("make") or match.group("gensweep") or match.group("module")
                rest = segment[match.end():]
                try:
                    args = tuple(shlex.split(rest, comments=True))
                except ValueError:  # unbalanced quotes: no program takes this argument
                    args = ("unbalanced-shell-quotes",)
                found.append(Command(page, number, program, args, inline))
    return found


def all_commands() -> list[Command]:
    return [c for path in PAGES for c in commands_in(path.relative_to(REPO).as_posix(), path.read_text())]


# -- placeholders -----------------------------------------------------------------------

def is_placeholder(token: str) -> bool:
    return token == "..." or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", token)) or bool(re.fullmatch(r"<[^>]+>", token))


def argv_variants(args: tuple[str, ...]) -> list[list[str]]:
    """The argument lists a synopsis stands for: brackets dropped, `...` dropped, a
    whole-word placeholder given a value, `<name>` inside a token given a name, and each
    alternative of `a|b` tried in turn (the others at their first)."""
    tokens = []
    for token in args:
        token = token.strip("[]")
        if token in ("", "..."):
            continue
        token = re.sub(r"<[^>]+>|\.\.\.$", "x", token)  # results/<study>, raysubmit_...
        alternatives = token.split("|") if "|" in token and "://" not in token else [token]
        tokens.append(["1" if is_placeholder(a) else a for a in alternatives])
    variants = [[alts[0] for alts in tokens]]
    for i, alts in enumerate(tokens):
        for alt in alts[1:]:
            variant = list(variants[0])
            variant[i] = alt
            variants.append(variant)
    return variants


# -- make -------------------------------------------------------------------------------

@dataclass
class MakeTargets:
    names: set[str]
    patterns: dict[str, str]  # pattern rule (sweep-%) -> its recipe

    def knows(self, target: str) -> bool:
        if target in self.names:
            return True
        for pattern, recipe in self.patterns.items():
            prefix, _, suffix = pattern.partition("%")
            if target.startswith(prefix) and target.endswith(suffix) and len(target) > len(prefix) + len(suffix):
                stem = target[len(prefix): len(target) - len(suffix)]
                if "sweeps/$(subst -,_,$*).yaml" in recipe:  # sweep-%: the stem names a spec
                    return PLACEHOLDER_WORD.fullmatch(stem) is not None or \
                        (REPO / "sweeps" / f"{stem.replace('-', '_')}.yaml").exists()
                return True
        return False


def make_targets(makefile: Path = REPO / "Makefile") -> MakeTargets:
    """The rules of the Makefile and the files it includes, read from the files (make's
    own database would also evaluate the $(shell ...) lines)."""
    names, patterns, seen = set(), {}, set()

    def read(path: Path) -> None:
        if path in seen or not path.exists():
            return
        seen.add(path)
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            include = re.match(r"^-?include\s+(.+)$", line)
            if include:
                for name in include.group(1).split():
                    read(REPO / name)
                continue
            rule = re.match(r"^([^\s#:=$][^:=#]*?)\s*::?(?!=)", line)
            if not rule or line.startswith("\t"):
                continue
            recipe = "\n".join(itertools.takewhile(lambda l: l.startswith("\t"), lines[i + 1:]))
            for target in rule.group(1).split():
                if target.startswith(".") or "$(" in target:
                    continue
                if "%" in target:
                    patterns[target] = recipe
                else:
                    names.add(target)

    read(makefile)
    return MakeTargets(names, patterns)


def make_problem(command: Command, targets: MakeTargets) -> str | None:
    args, problems = list(command.args), []
    while args:
        token = args.pop(0).strip("[]")
        if token in ("-f", "-C", "--file", "--directory"):
            del args[:1]  # the option's value
            continue
        if token.startswith("-") or not token or token == "...":
            continue
        assignment = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", token)
        if assignment:
            name, value = assignment.groups()
            if name == "PROFILE" and value and not is_placeholder(value) and not set(value.split("|")) <= PROFILES:
                problems.append(f"PROFILE={value}: profiles are {', '.join(sorted(PROFILES))}")
            continue
        for target in token.split("|"):
            if PLACEHOLDER_WORD.search(target) or "<" in target or "..." in target:
                # sweep-NAME: some rule must take that shape
                probe = re.sub(r"<[^>]+>|\.\.\.", "wd", PLACEHOLDER_WORD.sub("NAME", target))
                if not targets.knows(probe):
                    problems.append(f"{target}: no rule of that shape")
            elif not targets.knows(target):
                problems.append(f"{target}: no such make target")
    return "; ".join(problems) or None


# -- argparse programs ------------------------------------------------------------------

def load_parser(program: str):
    module_name, _, function = PARSERS[program].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, function)


def parse_problem(command: Command, build_parser) -> str | None:
    """None when every variant of the command parses; else argparse's complaint."""
    mention = command.inline and all(re.fullmatch(r"[a-z][a-z-]*|\.\.\.", a) for a in command.args)
    for argv in argv_variants(command.args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                build_parser().parse_args(argv)
            except SystemExit as exc:
                if exc.code in (0, None):
                    continue
                message = (err.getvalue().strip().splitlines() or ["exit %s" % exc.code])[-1]
                if mention and "arguments are required" in message:
                    continue  # `gensweep run` in a sentence: the subcommand exists
                return f"{' '.join(argv)!r}: {message}"
    return None


# -- paths and links --------------------------------------------------------------------

def spec_path_problems(page: str, text: str) -> list[str]:
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in SPEC_PATH.finditer(line):
            path = match.group(1)
            stem = Path(path).stem
            if any(c in path for c in "*<>") or stem in PLACEHOLDER_SPEC_STEMS or PLACEHOLDER_WORD.fullmatch(stem):
                continue
            if not (REPO / path).is_file():
                problems.append(f"{page}:{number}: {path}: no such spec")
    return problems


def repo_path_problems(page: str, text: str) -> list[str]:
    _, prose = split_page(text)
    problems = []
    for number, code in inline_code(prose):
        for path in code.split(", "):
            if not re.fullmatch(r"(?:%s)/[\w./-]*" % "|".join(REPO_DIRS), path) or path.endswith(".yaml"):
                continue  # spec paths: spec_path_problems
            if not (REPO / path.rstrip("/")).exists():
                problems.append(f"{page}:{number}: {path}: not in the repository")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_page(path.read_text())
    found, counts = set(), {}
    for line in prose.splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def link_problems(path: Path, text: str) -> list[str]:
    page = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    _, prose = split_page(text)
    prose = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)  # keeps line numbers
    problems = []
    for match in LINK.finditer(prose):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        number = prose.count("\n", 0, match.start()) + 1
        if not linked.exists():
            problems.append(f"{page}:{number}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{page}:{number}: {target}: no heading #{anchor} in {linked.name}")
    return problems


# -- the tests --------------------------------------------------------------------------

COMMANDS = all_commands()


def test_the_pages_show_commands_of_each_program():
    programs = {c.program for c in COMMANDS}
    assert {"make", "gensweep", "sweeps", "analysis", "bench"} <= programs, programs
    assert (REPO / "docs").is_dir() and len(PAGES) > 5


def test_every_make_target_shown_exists():
    targets = make_targets()
    assert {"test", "sweep", "bench", "docker-build"} <= targets.names and "sweep-%" in targets.patterns
    problems = [f"{c}: {p}" for c in COMMANDS if c.program == "make" and (p := make_problem(c, targets))]
    assert not problems, "make commands in the docs that make does not know:\n" + "\n".join(problems)


@pytest.mark.parametrize("program", ["gensweep", "sweeps", "analysis", "bench"])
def test_every_command_shown_parses(program):
    commands = [c for c in COMMANDS if c.program == program]
    assert commands, f"no {program} command in the docs"
    build_parser = load_parser(program)  # an ImportError here: the parser is not where the docs' programs live
    problems = [f"{c}: {p}" for c in commands if (p := parse_problem(c, build_parser))]
    assert not problems, f"{program} commands in the docs that its parser refuses:\n" + "\n".join(problems)


def test_every_spec_path_named_exists():
    problems = [p for path in PAGES for p in spec_path_problems(path.relative_to(REPO).as_posix(), path.read_text())]
    assert not problems, "\n".join(problems)


def test_every_repository_path_in_inline_code_exists():
    problems = [p for path in PAGES for p in repo_path_problems(path.relative_to(REPO).as_posix(), path.read_text())]
    assert not problems, "\n".join(problems)


def test_links_and_anchors_resolve():
    problems = [p for path in PAGES for p in link_problems(path, path.read_text())]
    assert not problems, "\n".join(problems)


def test_every_study_has_a_page_and_a_row_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for spec in sorted((REPO / "sweeps").glob("*.yaml")):
        assert (REPO / "docs" / "studies" / f"{spec.stem}.md").is_file(), f"docs/studies/{spec.stem}.md is missing"
        assert f"(docs/studies/{spec.stem}.md) | `sweeps/{spec.stem}.yaml` |" in readme, f"no README row for {spec.name}"


def test_the_performance_page_keeps_the_bench_block():
    from bench.__main__ import DEFAULT_DOC
    from bench.readme import END, START, replace_block

    assert DEFAULT_DOC == REPO / "docs" / "performance.md"
    text = DEFAULT_DOC.read_text()
    assert text.count(START) == text.count(END) == 1 and replace_block(text, "x") is not None
    assert START not in (REPO / "README.md").read_text()


def test_the_checks_catch_mistakes(tmp_path):
    page = tmp_path / "bad.md"
    text = """# Bad page

```sh
make sweep-wd PROFILE=quick
make no-such-target
make sweep-no-such-study
make sweep-NAME PROFILE=fast
python -m bench --no-such-option
python -m bench --only flops --reps three
make test ARGS='-k x
```

Run `make tset`, `python -m bench --quick`, see `sweeps/nope.yaml` and `trainables/nope.py`,
[a page](nowhere.md) and [a heading](#no-such-heading), and [this one](#bad-page).
"""
    page.write_text(text)
    commands = commands_in("bad.md", text)
    targets = make_targets()
    make_found = {str(c) for c in commands if c.program == "make" and make_problem(c, targets)}
    assert make_found == {"bad.md:5: make no-such-target", "bad.md:6: make sweep-no-such-study",
                          "bad.md:7: make sweep-NAME PROFILE=fast", "bad.md:10: make unbalanced-shell-quotes",
                          "bad.md:13: make tset"}
    bench = load_parser("bench")
    bench_found = {str(c) for c in commands if c.program == "bench" and parse_problem(c, bench)}
    assert bench_found == {"bad.md:8: bench --no-such-option", "bad.md:9: bench --only flops --reps three"}
    assert len(spec_path_problems("bad.md", text)) == 1
    assert repo_path_problems("bad.md", text) == ["bad.md:13: trainables/nope.py: not in the repository"]
    assert [p.split(": ", 1)[1] for p in link_problems(page, text)] == [
        "nowhere.md: no such file", "#no-such-heading: no heading #no-such-heading in bad.md"]
    # placeholders and synopses are read as such
    assert argv_variants(("run", "SPEC", "[--profile", "quick|smoke]")) == [
        ["run", "1", "--profile", "quick"], ["run", "1", "--profile", "smoke"]]
    assert argv_variants(("logs", "raysubmit_...", "--address", "http://HEAD:8265")) == [
        ["logs", "raysubmit_x", "--address", "http://HEAD:8265"]]
    assert slug("What was tested (`tests/test_faults.py`)") == "what-was-tested-teststest_faultspy"
