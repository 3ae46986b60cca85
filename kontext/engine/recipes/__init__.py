"""The recipe registry: ``KONTEXT_RECIPE`` picks one; every result names the recipe that made it."""

from __future__ import annotations

from kontext.engine.recipes import kontext_v1, reference_v1
from kontext.engine.recipes.base import EditParams, Recipe

RECIPES: dict[str, Recipe] = {recipe.id: recipe for recipe in (reference_v1.RECIPE, kontext_v1.RECIPE)}
DEFAULT_RECIPE = reference_v1.RECIPE.id
"""The subnet audits miners against its reference miner, so its recipe is the default."""


def get_recipe(recipe_id: str) -> Recipe:
    try:
        return RECIPES[recipe_id]
    except KeyError:
        raise ValueError(f"unknown recipe {recipe_id!r}; known: {', '.join(RECIPES)}") from None


def ignored_fields(recipe_id: str | None, width: int | None) -> list[str]:
    """Request fields a job's recipe records but does not use."""
    recipe = RECIPES.get(recipe_id or "")
    return ["width", "height"] if recipe is not None and not recipe.honours_size and width is not None else []


__all__ = ["DEFAULT_RECIPE", "EditParams", "RECIPES", "Recipe", "get_recipe", "ignored_fields"]
