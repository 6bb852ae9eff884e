"""The retrieval query language: the paper's s-expressions over terms and the ``(nn ...)`` operator.

    (term location:seattle)                      documents holding the term
    (and E1 E2 ...)  (or E1 E2 ...)  (not E)     Boolean set operations
    (nn <model-key> :radius 0.24 :nprobe 16)     documents whose embedding's cosine to the query's is >= radius
    (nn <model-key> :k 100)                      the query's top-k documents by cosine

Inside an ``and``, an nn operator is constrained: it searches only the documents the rest of the expression
allows (section 4 of the paper). :func:`parse` turns text into an :class:`Expr` tree, with errors that name
the position and what was expected; :func:`unparse` gives the canonical text back (what a response shows,
so that a user can see and edit the expression). Limits keep hostile input cheap: text length, nesting
depth, number of nodes, and the ranges of radius, k and nprobe.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Union, cast

MAX_LENGTH = 4096
MAX_DEPTH = 16
MAX_NODES = 256
MAX_K = 10_000
MAX_NPROBE = 65_536
_ATOM = re.compile(r"[^\s()]+")
_TERM = re.compile(r"^[a-z][a-z0-9_]*:[^\s()]+$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class QuerySyntaxError(ValueError):
    """A query that does not parse; ``position`` is the character offset where it went wrong."""

    def __init__(self, message: str, position: int, text: str = ""):
        self.position = position
        pointer = ""
        if text:
            start = max(0, position - 30)
            pointer = f"\n  {text[start:position + 30]}\n  {' ' * (position - start)}^"
        super().__init__(f"{message} at position {position}{pointer}")


@dataclass(frozen=True)
class Term:
    term: str


@dataclass(frozen=True)
class And:
    children: tuple["Expr", ...]


@dataclass(frozen=True)
class Or:
    children: tuple["Expr", ...]


@dataclass(frozen=True)
class Not:
    child: "Expr"


@dataclass(frozen=True)
class NN:
    model: str
    radius: float | None = None
    k: int | None = None
    nprobe: int | None = None


Expr = Union[Term, And, Or, Not, NN]


def _tokens(text: str) -> list[tuple[str, int]]:
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()":
            out.append((c, i))
            i += 1
        else:
            m = _ATOM.match(text, i)
            assert m is not None  # text[i] is neither space nor a parenthesis: an atom starts here
            out.append((m.group(0), i))
            i = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.nodes = 0

    def error(self, message: str, pos: int | None = None) -> QuerySyntaxError:
        if pos is None:
            pos = self.toks[self.i][1] if self.i < len(self.toks) else len(self.text)
        return QuerySyntaxError(message, pos, self.text)

    def peek(self) -> tuple[str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, what: str) -> tuple[str, int]:
        tok = self.peek()
        if tok is None:
            raise self.error(f"unexpected end of query, expected {what}")
        self.i += 1
        return tok

    def expr(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH} levels")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.error(f"more than {MAX_NODES} operators and terms")
        tok, pos = self.take("'('")
        if tok != "(":
            raise self.error(f"expected '(' to open an expression, got {tok!r}", pos)
        op, op_pos = self.take("an operator (term, and, or, not, nn)")
        if op == "term":
            term, tpos = self.take("a term such as location:seattle")
            if term in "()" or not _TERM.match(term):
                raise self.error(f"expected a term field:value (e.g. text:john, location:menlo_park), got {term!r}",
                                 tpos)
            out: Expr = Term(term)
        elif op in ("and", "or"):
            children = []
            while (nxt := self.peek()) is not None and nxt[0] != ")":
                children.append(self.expr(depth + 1))
            if not children:
                raise self.error(f"({op} ...) needs at least one expression")
            out = And(tuple(children)) if op == "and" else Or(tuple(children))
        elif op == "not":
            out = Not(self.expr(depth + 1))
        elif op == "nn":
            out = self.nn()
        else:
            raise self.error(f"unknown operator {op!r}; expected term, and, or, not or nn", op_pos)
        tok, pos = self.take("')'")
        if tok != ")":
            raise self.error(f"expected ')' to close ({op} ...), got {tok!r}", pos)
        return out

    def nn(self) -> NN:
        key, kpos = self.take("a model key after nn")
        if key in "()" or key.startswith(":") or not _KEY.match(key):
            raise self.error(f"expected a model key after nn (e.g. unified), got {key!r}", kpos)
        opts: dict[str, float | int] = {}
        while (nxt := self.peek()) is not None and nxt[0] != ")":
            name, npos = self.take("an option")
            if name not in (":radius", ":k", ":nprobe"):
                raise self.error(f"unknown nn option {name!r}; expected :radius, :k or :nprobe", npos)
            if name[1:] in opts:
                raise self.error(f"nn option {name} given twice", npos)
            value, vpos = self.take(f"a value after {name}")
            opts[name[1:]] = self.number(name, value, vpos)
        if "radius" not in opts and "k" not in opts:
            raise self.error("nn needs :radius (cosine threshold) or :k (top-k)", kpos)
        # number() gives an int for :k and :nprobe
        return NN(key, opts.get("radius"), cast("int | None", opts.get("k")), cast("int | None", opts.get("nprobe")))

    def number(self, name: str, value: str, pos: int) -> float | int:
        try:
            if name == ":radius":
                r = float(value)
                if not math.isfinite(r) or not -1.0 <= r <= 1.0:
                    raise ValueError
                return r
            v = int(value)
        except ValueError:
            what = "a cosine in [-1, 1]" if name == ":radius" else "an integer"
            raise self.error(f"{name} must be {what}, got {value!r}", pos) from None
        hi = MAX_K if name == ":k" else MAX_NPROBE
        if not 1 <= v <= hi:
            raise self.error(f"{name} must be in [1, {hi}], got {v}", pos)
        return v


def parse(text: str) -> Expr:
    """The expression tree of ``text`` (raises :class:`QuerySyntaxError`)."""
    if not isinstance(text, str):
        raise QuerySyntaxError(f"a query is text, got {type(text).__name__}", 0)
    if len(text) > MAX_LENGTH:
        raise QuerySyntaxError(f"query longer than {MAX_LENGTH} characters ({len(text)})", MAX_LENGTH)
    p = _Parser(text)
    if not p.toks:
        raise QuerySyntaxError("empty query", 0)
    out = p.expr(1)
    if (nxt := p.peek()) is not None:
        raise p.error(f"unexpected {nxt[0]!r} after the end of the expression")
    return out


def unparse(expr: Expr) -> str:
    """The canonical text of an expression (``parse(unparse(e)) == e``)."""
    if isinstance(expr, Term):
        return f"(term {expr.term})"
    if isinstance(expr, (And, Or)):
        op = "and" if isinstance(expr, And) else "or"
        return f"({op} " + " ".join(unparse(c) for c in expr.children) + ")"
    if isinstance(expr, Not):
        return f"(not {unparse(expr.child)})"
    opts = "".join(f" :{n} {v!r}"
                   for n, v in (("radius", expr.radius), ("k", expr.k), ("nprobe", expr.nprobe)) if v is not None)
    return f"(nn {expr.model}{opts})"


def has_nn(expr: Expr) -> bool:
    if isinstance(expr, NN):
        return True
    if isinstance(expr, (And, Or)):
        return any(has_nn(c) for c in expr.children)
    if isinstance(expr, Not):
        return has_nn(expr.child)
    return False


__all__ = ["And", "Expr", "NN", "Not", "Or", "QuerySyntaxError", "Term", "has_nn", "parse", "unparse"]
