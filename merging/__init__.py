"""Merge operators (pure tensor math) and the streaming merge engine (I/O, device).

Public API (nothing is imported here, so `import merging` stays free of torch):

    from merging.recipe import Recipe
    from merging.engine import run_merge

    recipe = Recipe.from_arm("ties", {"weight": [0.7, 0.3], "density": 0.5},
                             models=["ckpt/a", "ckpt/b"], base="ckpt/base", seed=0)
    result = run_merge(recipe, "out/merged", device="auto")   # MergeResult

- merging.spec: how an operator is declared (Param, OperatorSpec, merge_operator,
  OperatorParams). merging.registry: list_operators(), get_operator(name),
  validate_params(operator, params, n_models), load_plugin("module:function");
  entry-point group simmerge.operators. Both importable without torch.
- merging.recipe: Recipe (from_arm, from_dict/to_dict, to_json, from_yaml/to_yaml,
  load(path), resolve(), validate()) in mergekit's configuration layout and meaning;
  merging.settings: gradients and per-tensor filters; merging.multi: multi-document
  recipes (run_recipe_file). Importable without torch.
- merging.engine: run_merge(recipe, out_dir, ..., provenance=None), plan_merge(recipe)
  (all checks, no tensor read). merging.output: side files, mergekit_config.yml, the
  model card, the partial folder.
- merging.operators: the built-in operators and their building blocks.
- merging.dtypes (the one dtype table), merging.architecture (the one architecture
  check), merging.checkpoint, merging.device, merging.writer: reading folders, choosing
  the device, writing shards.
Every error a user can cause is a merging.errors.MergeError with a one-line message.
"""
