"""Row expressions that come from files a pull request may change (a slice's ``expr`` in the config, a GX
suite's ``row_condition``): pandas evaluates them (``DataFrame.eval``/``query``), and its expressions can call
any method, reach the caller's variables with ``@`` (write a file, read a pickle: run code). Only column
names (pandas' backticks quote one with spaces), constants, comparisons, ``in``, arithmetic and and/or/not
are taken.

pandas folds the constants in Python before it evaluates a row, so arithmetic on constants runs at Python's
speed on Python's numbers: a tower of powers (``10 ** 10 ** 10``) or a repeated string (``'a' * 10 ** 12``)
would hold the gate's job until it times out, or exhaust its memory. A power's exponent is a literal number
of at most ``MAX_EXPONENT`` with no power inside the power, strings and lists are only compared, and an
expression is at most ``MAX_LENGTH`` characters: the largest number it can fold has ~63,000 digits (a
980-digit literal to the 64th power), folded in milliseconds."""

from __future__ import annotations

import ast
import re

ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Invert, ast.BinOp, ast.Add,
    ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr, ast.BitXor, ast.Compare, ast.Eq,
    ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple,
)

MAX_LENGTH = 1_000  # characters: a slice or a row condition is a line, not a program
MAX_EXPONENT = 64


def check_row_expression(expression: str, what: str) -> None:
    """ValueError naming ``what`` unless ``expression`` holds only what the module allows."""
    if len(expression) > MAX_LENGTH:
        raise ValueError(f"{what} is {len(expression):,} characters long: at most {MAX_LENGTH:,} are taken")
    text = re.sub(r"`[^`]*`", "column", expression)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"{what} {expression!r} is not an expression ({error.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED_NODES) or (isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str))):
            raise ValueError(f"{what} {expression!r}: {type(node).__name__} is not allowed (it may compare columns and "
                             "constants, with arithmetic, in, and/or/not)")
        refused = _unbounded(node)
        if refused:
            raise ValueError(f"{what} {expression!r}: {refused}")


def _unbounded(node: ast.AST) -> str | None:
    """Why ``node`` could make pandas' constant folding run without bound (None when it cannot)."""
    if isinstance(node, ast.BinOp):
        for operand in (node.left, node.right):
            if isinstance(operand, (ast.List, ast.Tuple)) or (isinstance(operand, ast.Constant) and isinstance(operand.value, str)):
                return "strings and lists may only be compared, not used in arithmetic"
        if isinstance(node.op, ast.Pow):
            exponent = node.right.operand if isinstance(node.right, ast.UnaryOp) else node.right
            if not (isinstance(exponent, ast.Constant) and isinstance(exponent.value, (int, float))
                    and not isinstance(exponent.value, bool) and abs(exponent.value) <= MAX_EXPONENT):
                return f"a power's exponent must be a number of at most {MAX_EXPONENT}"
            if any(isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Pow) for inner in ast.walk(node.left)):
                return "a power may not hold another power"
    return None
