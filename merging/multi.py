"""Multi-document recipes: several merges in one YAML file, later ones using earlier ones.

Each document is one recipe; a document with `name: X` is an intermediate merge that
other documents name as a model (`model: X`, `base_model: X`, a slice source or
`tokenizer_source`). The document without a name is the final merge written to the
output folder (with every document named, the last one is final). Merges run in
dependency order; intermediates go to a hidden sibling folder of the output (or to
`intermediate_dir`, kept) and are removed once the final merge is in place. A name used
twice, two unnamed documents or a cycle is an error before any work. mergekit-multi's
meaning; no torch here until the merges run.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from merging.errors import MergeError
from merging.recipe import Recipe, RecipeModel, RecipeSlice, SliceSource, load_yaml_documents, read_recipe_text


def load_recipes(path: str | os.PathLike) -> list[Recipe]:
    """Every document of a recipe file as a Recipe, in file order (one-line errors)."""
    p = Path(path)
    try:
        documents = load_yaml_documents(read_recipe_text(p))
        recipes = []
        for i, doc in enumerate(documents):
            try:
                recipes.append(Recipe.from_dict(doc))
            except MergeError as e:
                raise MergeError(f"document {i + 1}: {e}") if len(documents) > 1 else e from None
        return recipes
    except MergeError as e:
        raise MergeError(f"{p}: {e}") from None


def merge_order(recipes: list[Recipe]) -> tuple[list[Recipe], Recipe]:
    """(intermediates in the order they must run, the final recipe)."""
    by_name: dict[str, Recipe] = {}
    unnamed = [r for r in recipes if r.name is None]
    if len(unnamed) > 1:
        raise MergeError("recipe: more than one document without a name (only the final merge may have none)")
    for r in recipes:
        if r.name is not None:
            if r.name in by_name:
                raise MergeError(f"recipe: the name {r.name!r} is used by two documents")
            by_name[r.name] = r
    final = unnamed[0] if unnamed else recipes[-1]
    order: list[Recipe] = []
    state: dict[str, str] = {}

    def visit(r: Recipe, chain: tuple[str, ...]) -> None:
        for dep in references(r):
            if dep not in by_name:
                continue
            if state.get(dep) == "done":
                continue
            if dep in chain or state.get(dep) == "active":
                raise MergeError(f"recipe: circular reference through {dep!r}")
            state[dep] = "active"
            visit(by_name[dep], chain + (dep,))
            state[dep] = "done"
            order.append(by_name[dep])

    visit(final, (final.name,) if final.name else ())
    return order, final


def references(r: Recipe) -> list[str]:
    """Every model reference of a recipe (paths or names of other documents)."""
    refs = [m.path for m in r.models] + [src.path for s in r.slices for src in s.sources]
    refs += [s.base for s in r.slices if s.base is not None]
    if r.base is not None:
        refs.append(r.base)
    if r.tokenizer_source not in (None, "union", "base"):
        refs.append(r.tokenizer_source)
    if r.tokenizer is not None:
        refs += r.tokenizer.model_references()
    return refs


def with_paths(r: Recipe, where: dict[str, str]) -> Recipe:
    """The recipe with names of intermediates replaced by their folders."""
    def fix(p: str | None) -> Any:
        return where.get(p, p) if p is not None else None

    slices = tuple(RecipeSlice(tuple(SliceSource(fix(src.path), src.layer_range, src.params) for src in s.sources),
                               fix(s.base), s.params, s.residual_weight) for s in r.slices)
    tokenizer = r.tokenizer_source if r.tokenizer_source in (None, "union", "base") else fix(r.tokenizer_source)
    return replace(r, models=tuple(RecipeModel(fix(m.path), m.params) for m in r.models), base=fix(r.base),
                   slices=slices, tokenizer_source=tokenizer,
                   tokenizer=r.tokenizer.with_paths(fix) if r.tokenizer is not None else None)


def run_recipe_file(path: str | os.PathLike, out_dir: str | os.PathLike, *, intermediate_dir: str | None = None,
                    overrides: dict | None = None, **engine_options):
    """Run every merge a recipe file describes; the final one into out_dir. overrides
    (dtype, out_dtype, seed) apply to every document. Returns the final MergeResult."""
    from merging.engine import run_merge

    recipes = load_recipes(path)
    if overrides:
        recipes = [r.replace(**overrides) for r in recipes]
    order, final = merge_order(recipes)
    out = Path(out_dir)
    keep = intermediate_dir is not None
    work = Path(intermediate_dir) if keep else out.parent / f".{out.name}.intermediate"
    where: dict[str, str] = {}
    for r in order:
        where[r.name] = str(work / r.name)
    # Check every document (with the intermediates' future paths) before any merge runs.
    for r in order + [final]:
        patched = with_paths(r, where)
        try:
            patched.resolve()
        except MergeError as e:
            raise MergeError(f"{path}: {r.name or 'final merge'}: {e}") from None
    try:
        for r in order:
            target = Path(where[r.name])
            if target.exists() and keep and any(target.iterdir()):
                continue  # an intermediate kept from an earlier run
            run_merge(with_paths(r, where), target, overwrite=True, **engine_options)
        return run_merge(with_paths(final, where), out, **engine_options)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
