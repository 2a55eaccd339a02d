"""Style sweep of issue 21: markdown backticks in docstrings and comments, unquoted annotations under
`from __future__ import annotations`, `collections.abc.Sequence` for `typing.Sequence`."""
import io, re, sys, tokenize
from pathlib import Path

DOUBLE = re.compile(r"``([^`]+?)``")
QUOTED_RETURN = re.compile(r'(\)\s*->\s*)"([A-Za-z_][\w.\[\], |]*)"(\s*:)')
QUOTED_PARAM = re.compile(r'^(\s+\w+: |.*\bdef .*\b\w+: )"([A-Z_][\w.\[\], |]*)"(?=[,)=\s])', re.MULTILINE)

import ast


def _code(src: str) -> str:
    """The module's AST without docstrings and annotations: what must not change."""
    tree = ast.parse(src)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
        for field in ("returns", "annotation"):
            if hasattr(node, field) and not isinstance(node, ast.AnnAssign):
                setattr(node, field, None)
        if isinstance(node, ast.AnnAssign):
            node.annotation = ast.Constant(None)
    return ast.dump(tree)


def sweep(path: Path) -> bool:
    src = path.read_text()
    out, last = [], (1, 0)
    lines = src.splitlines(keepends=True)
    # Rewrite only STRING tokens that are docstrings (a statement of their own) and COMMENT tokens.
    edits = []
    toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    for i, tok in enumerate(toks):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.string.startswith(('"""', 'r"""'))
                and (i == 0 or toks[i - 1].type in (tokenize.INDENT, tokenize.NEWLINE, tokenize.NL, tokenize.DEDENT, tokenize.ENCODING))):
            new = DOUBLE.sub(r"`\1`", tok.string)
            if new != tok.string:
                edits.append((tok.start, tok.end, new))
    for (sr, sc), (er, ec), new in reversed(edits):
        start = sum(len(l) for l in lines[: sr - 1]) + sc
        end = sum(len(l) for l in lines[: er - 1]) + ec
        src = src[:start] + new + src[end:]
        lines = src.splitlines(keepends=True)
    if "from __future__ import annotations" in src:
        src = QUOTED_RETURN.sub(r"\1\2\3", src)
        for _ in range(3):  # several quoted parameters on one def line
            src = QUOTED_PARAM.sub(r"\1\2", src)
        src = re.sub(r'(self\.\w+: )"([\w.\[\], |]+)"( = )', r"\1\2\3", src)
    if _code(src) != _code(path.read_text()):
        raise SystemExit(f"{path}: the sweep changed code, not only docstrings, comments and annotations")
    src = src.replace("from typing import Sequence\n", "from collections.abc import Sequence\n")
    changed = src != path.read_text()
    if changed:
        path.write_text(src)
    return changed

files = [Path(p) for p in sys.argv[1:]]
print(sum(sweep(p) for p in files), "files changed")
