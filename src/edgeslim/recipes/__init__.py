"""Recipes: named transforms from the prepared fp32 model to a candidate model.

A recipe spec is `name` or `name:option=value,...` (e.g. `int8:calibrator=entropy`); options are the fields
of the recipe's frozen config dataclass.
"""

from __future__ import annotations

import dataclasses

from ..errors import InvalidParameterError
from ..registry import Registry
from .base import Recipe, RecipeContext, RecipeOutput

RECIPES: Registry[type[Recipe]] = Registry("recipe")
register_recipe = RECIPES.register

from . import float as _float  # noqa: E402,F401
from . import int8 as _int8  # noqa: E402,F401
from . import mixed as _mixed  # noqa: E402,F401
from . import transformer as _transformer  # noqa: E402,F401
from . import weight_only as _weight_only  # noqa: E402,F401


def get_recipe(spec: str) -> Recipe:
    """`int8` or `int8:calibrator=mse` -> a configured recipe instance."""
    name, _, opts = spec.partition(":")
    cls = RECIPES.get(name.strip())
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls.Config)} if hasattr(cls, "Config") else {}
    for part in filter(None, (p.strip() for p in opts.split(","))):
        key, eq, val = part.partition("=")
        if not eq or key not in fields:
            raise InvalidParameterError(
                f"recipe option {part!r} is not valid for {name!r}. Options: {', '.join(fields) or 'none'}; "
                f"write e.g. {name}:{next(iter(fields), 'option')}=value."
            )
        kwargs[key] = _coerce(name, key, val, fields[key].type)
    r = cls(cls.Config(**kwargs)) if fields else cls()
    r.validate()
    return r


def _coerce(recipe: str, key: str, val: str, typ) -> object:
    t = str(typ)
    try:
        if "int" in t and "Point" not in t:
            return int(val)
        if "float" in t:
            x = float(val)
            if x != x or x in (float("inf"), float("-inf")):
                raise ValueError
            return x
    except ValueError:
        kind = "a whole number" if "int" in t else "a finite number"
        raise InvalidParameterError(f"recipe option {recipe}:{key}={val!r} is not {kind}. Write e.g. {recipe}:{key}=1.") from None
    if "bool" in t:
        if val.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise InvalidParameterError(f"recipe option {recipe}:{key}={val!r} is not true/false. Write {recipe}:{key}=true.")
        return val.lower() in ("1", "true", "yes")
    return val


def list_recipes(pattern: str = "*") -> list[str]:
    return RECIPES.names(pattern)


__all__ = ["Recipe", "RecipeContext", "RecipeOutput", "RECIPES", "register_recipe", "get_recipe", "list_recipes"]
