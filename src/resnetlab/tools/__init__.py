"""Commands that are not pipeline stages (`predict`, `serve`, `relog`, `app`, `launch`): the same
`add_arguments(parser)` / `run(args)` shape as `pipeline`, run by hand (or by `mlflow run`), never
by DVC.
"""
