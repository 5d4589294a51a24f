"""Row expressions that come from files a pull request may change (a slice's ``expr`` in the config, a GX
suite's ``row_condition``): pandas evaluates them (``DataFrame.eval``/``query``), and its expressions can call
any method, reach the caller's variables with ``@`` (write a file, read a pickle: run code). Only column
names (pandas' backticks quote one with spaces), constants, comparisons, ``in``, arithmetic and and/or/not
are taken."""

from __future__ import annotations

import ast
import re

ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Invert, ast.BinOp, ast.Add,
    ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr, ast.BitXor, ast.Compare, ast.Eq,
    ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple,
)


def check_row_expression(expression: str, what: str) -> None:
    """ValueError naming ``what`` unless ``expression`` holds only what the module allows."""
    text = re.sub(r"`[^`]*`", "column", expression)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"{what} {expression!r} is not an expression ({error.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED_NODES) or (isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str))):
            raise ValueError(f"{what} {expression!r}: {type(node).__name__} is not allowed (it may compare columns and "
                             "constants, with arithmetic, in, and/or/not)")
