"""Commands that are not pipeline stages (`predict`, `relog`, `app`): the same
`add_arguments(parser)` / `run(args)` shape as `pipeline`, run by hand, never by DVC.
"""
