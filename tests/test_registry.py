import pytest

from edgeslim.errors import UnknownNameError
from edgeslim.recipes import list_recipes
from edgeslim.registry import Registry


def test_duplicate_name_fails():
    r = Registry("thing")
    r.register("a")(object())
    with pytest.raises(RuntimeError, match="registered twice"):
        r.register("a")(object())


def test_unknown_name_lists_close_matches():
    r = Registry("recipe")
    for n in ("int8", "int8-dynamic", "fp16"):
        r.register(n)(type(n, (), {}))
    with pytest.raises(UnknownNameError, match="Did you mean int8"):
        r.get("int9")
    assert r.names("int8*") == ["int8", "int8-dynamic"]


def test_all_recipes_registered():
    assert set(list_recipes()) >= {"original", "fp32", "fp16", "bf16", "int8", "int8-dynamic", "w8", "w4", "mixed"}
