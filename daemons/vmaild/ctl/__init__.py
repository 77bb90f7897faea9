"""vmailctl: the administration command (schema, domains, users, aliases, imports).

Each command group lives in its own module and registers its sub-commands on the
argparse tree (``register(subparsers)``); ``main`` only builds the tree, runs the chosen
function with a :class:`~vmaild.ctl.context.Context` and turns expected errors into exit
codes (0 done, 1 refused, 2 usage, 75 temporary database failure).
"""
